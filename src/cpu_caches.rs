//! The CPU's data-cache sizes, and the cache blocking of the many-row matrix products
//! ([`crate::cpu_gemm`]'s `blocked` driver) derived from them.
//!
//! The blocking is what makes a GEMM's register kernel run from L1 instead of L2: a strip's
//! block of weights (`kc x 32` floats) is sized to half of L1d so that it stays there while every
//! row block of the packed activations (`mc x kc`, half of L2) passes over it. Fixed numbers
//! tuned on one host are wrong on another (Zen 3 / Zen 4: 32 KiB L1d, 512 KiB / 1 MiB L2;
//! recent Intel Xeons: 48 KiB L1d, 2 MiB L2), so they come from the running CPU.

use std::sync::OnceLock;

/// Per-core data-cache sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caches {
    pub l1d: usize,
    pub l2: usize,
}

impl Caches {
    /// What every x86-64 core of the last decade has at least (used when the sizes cannot be
    /// read).
    const FALLBACK: Caches = Caches {
        l1d: 32 << 10,
        l2: 512 << 10,
    };

    /// This CPU's sizes (read once: Linux's `/sys/devices/system/cpu/cpu0/cache`), or
    /// 32 KiB L1d and 512 KiB L2 where they cannot be read or look implausible.
    pub fn detected() -> Caches {
        static C: OnceLock<Caches> = OnceLock::new();
        *C.get_or_init(|| {
            Self::from_sysfs("/sys/devices/system/cpu/cpu0/cache").unwrap_or(Self::FALLBACK)
        })
    }

    /// Parses a sysfs cache directory (`index*/{level,type,size}`); `None` unless both an L1
    /// data (or unified) cache and an L2 of plausible size are found.
    pub fn from_sysfs(dir: &str) -> Option<Caches> {
        let (mut l1d, mut l2) = (None, None);
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let p = entry.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).ok();
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            let Some(size) = parse_size(size.trim()) else {
                continue;
            };
            match (level.trim(), kind.trim()) {
                ("1", "Data" | "Unified") => l1d = Some(size),
                ("2", "Data" | "Unified") => l2 = Some(size),
                _ => {}
            }
        }
        let c = Caches { l1d: l1d?, l2: l2? };
        // A hypervisor can show anything; sizes outside what CPUs have mean "unknown".
        let plausible =
            (16 << 10..=256 << 10).contains(&c.l1d) && (128 << 10..=8 << 20).contains(&c.l2);
        plausible.then_some(c)
    }
}

/// `"48K"`, `"2048K"`, `"2M"` or plain bytes.
fn parse_size(s: &str) -> Option<usize> {
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

/// The cache blocking of the `blocked` GEMM driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    /// Depth of a block (a multiple of 32, the int8 and bf16 strips' block depth): one strip's
    /// `kc x 32` f32 weights take about half of L1d, the rest holds the activation rows in
    /// flight and the output tile.
    pub kc: usize,
    /// Activation rows packed per block (a multiple of the register block's `mr`): `mc x kc`
    /// floats take about half of L2, next to the strips streaming through.
    pub mc: usize,
    /// Strips (32 columns each) per weight chunk: `strips x kc x 32` floats (~1 MiB), re-read
    /// from L2/L3 by every block of `mc` rows.
    pub strips: usize,
}

impl Blocking {
    /// The blocking for caches `c` and a register block of `mr` rows.
    pub fn for_caches(c: Caches, mr: usize) -> Blocking {
        let strip_row = 32 * 4; // bytes of one depth row of a strip
        let kc = (c.l1d / 2 / strip_row / 32 * 32).clamp(64, 512);
        let mc = (c.l2 / 2 / (kc * 4) / mr * mr).clamp(mr, 4096);
        let strips = ((1 << 20) / (kc * strip_row)).max(1);
        Blocking { kc, mc, strips }
    }

    /// The blocking for this CPU's caches.
    pub fn detected(mr: usize) -> Blocking {
        Self::for_caches(Caches::detected(), mr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("x1K"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn sysfs_directories_parse_and_implausible_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |idx: usize, level: &str, kind: &str, size: &str| {
            let d = dir.path().join(format!("index{idx}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("level"), format!("{level}\n")).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(d.join("size"), format!("{size}\n")).unwrap();
        };
        let path = dir.path().to_str().unwrap().to_string();
        write(0, "1", "Data", "48K");
        write(1, "1", "Instruction", "32K");
        assert_eq!(Caches::from_sysfs(&path), None, "no L2 yet");
        write(2, "2", "Unified", "2048K");
        write(3, "3", "Unified", "105M");
        assert_eq!(
            Caches::from_sysfs(&path),
            Some(Caches {
                l1d: 48 << 10,
                l2: 2 << 20
            })
        );
        write(0, "1", "Data", "4K");
        assert_eq!(
            Caches::from_sysfs(&path),
            None,
            "a 4 KiB L1d is not believed"
        );
        assert_eq!(Caches::from_sysfs("/nonexistent/diffugpt"), None);
    }

    #[test]
    fn blocking_follows_the_caches() {
        // Zen 3: 32 KiB L1d, 512 KiB L2; MR 6 (AVX2).
        let zen3 = Blocking::for_caches(Caches::FALLBACK, 6);
        assert_eq!(zen3.kc, 128);
        assert!(zen3.mc.is_multiple_of(6));
        assert!(zen3.mc * zen3.kc * 4 <= 256 << 10);
        assert_eq!(zen3.strips * zen3.kc * 128, 1 << 20);
        // Intel Xeon (Sapphire Rapids class): 48 KiB L1d, 2 MiB L2; MR 8 (AVX-512).
        let xeon = Blocking::for_caches(
            Caches {
                l1d: 48 << 10,
                l2: 2 << 20,
            },
            8,
        );
        assert_eq!(xeon.kc, 192);
        assert!(xeon.mc.is_multiple_of(8));
        assert!(xeon.mc > zen3.mc);
        // The depth is always a whole number of 32-deep quantisation blocks, at least 64.
        for l1d in [16 << 10, 24 << 10, 40 << 10, 64 << 10, 256 << 10] {
            let b = Blocking::for_caches(Caches { l1d, l2: 256 << 10 }, 6);
            assert!(
                b.kc.is_multiple_of(32) && (64..=512).contains(&b.kc),
                "{b:?}"
            );
            assert!(
                b.mc >= 6 && b.mc.is_multiple_of(6) && b.strips >= 1,
                "{b:?}"
            );
        }
    }
}
