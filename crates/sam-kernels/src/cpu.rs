//! What the CPU can run, detected once at run time.
//!
//! `SAM_KERNELS_ISA` caps what is used (`avx2`: no AVX-512; `none`: no
//! hand-written kernels), to compare kernels on one machine or to rule one
//! out.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cap {
    None,
    Avx2,
    Avx512,
}

fn cap() -> Cap {
    static CAP: OnceLock<Cap> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("SAM_KERNELS_ISA").as_deref() {
        Ok("none") => Cap::None,
        Ok("avx2") => Cap::Avx2,
        _ => Cap::Avx512,
    })
}

/// AVX2 + FMA.
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: OnceLock<bool> = OnceLock::new();
        return cap() >= Cap::Avx2
            && *HAS.get_or_init(|| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"));
    }
    #[allow(unreachable_code)]
    false
}

/// AVX-512 F (with BW and VL, which the packing code uses).
pub(crate) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: OnceLock<bool> = OnceLock::new();
        return cap() >= Cap::Avx512
            && *HAS.get_or_init(|| {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
            });
    }
    #[allow(unreachable_code)]
    false
}

/// AVX-512 BF16 dot products (`vdpbf16ps`).
pub(crate) fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: OnceLock<bool> = OnceLock::new();
        return avx512() && *HAS.get_or_init(|| std::is_x86_feature_detected!("avx512bf16"));
    }
    #[allow(unreachable_code)]
    false
}
