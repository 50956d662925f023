//! A minimal property-test harness: seeded cases, and on failure the smallest failing prefix of
//! the generated operation list. (Hand-rolled to keep the dependency tree empty.)

#![allow(dead_code)]

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0xD1B5_4A32_D192_ED03)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Run `cases` generated cases. `gen` makes an operation list from a generator; `check` runs
/// a list and returns an error message on failure. A failure is reported with its case number
/// and the shortest failing prefix.
pub fn forall<Op: std::fmt::Debug + Clone>(
    cases: u64,
    gen: impl Fn(&mut Rng) -> Vec<Op>,
    check: impl Fn(&[Op]) -> Result<(), String>,
) {
    let base = std::env::var("PAGEMESH_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    for case in base..base + cases {
        let ops = gen(&mut Rng::new(case));
        if let Err(first) = check(&ops) {
            let mut shortest = ops.len();
            let mut msg = first;
            for n in 1..ops.len() {
                if let Err(m) = check(&ops[..n]) {
                    shortest = n;
                    msg = m;
                    break;
                }
            }
            panic!(
                "property failed for case {case} (PAGEMESH_PROP_SEED={case}); shortest failing prefix has {shortest} ops:\n{:#?}\n{msg}",
                &ops[..shortest]
            );
        }
    }
}
