//! Run-time CPU-feature dispatch for the engine's element-wise and per-channel passes (BN
//! statistics and backward, ReLU masks, residual fan-out, epilogues): a body written once as
//! an `#[inline(always)]` function is compiled for AVX-512F, for AVX2 + FMA, and for the
//! baseline target, and the best variant the CPU has runs (the Winograd transforms stop at
//! AVX2).
//!
//! Every variant gives the same bits: Rust never contracts `a * b + c` into an FMA, and the
//! bodies keep each value's operation order (they vectorise across channels, never across the
//! terms of one sum), so only the width of the instructions differs.

/// Calls `$body($args)` through the widest variant the CPU supports (see the module docs).
/// `$body` must be an `#[inline(always)]` function of the listed arguments.
///
/// `dispatch!(avx2: body, (args))` stops at AVX2 + FMA: the Winograd transforms, measured no
/// faster with AVX-512 (RESULTS.md, "Fifth session").
macro_rules! dispatch {
    (avx2: $body:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide256($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features the variant is compiled for.
                return unsafe { wide256($($arg),*) };
            }
        }
        $body($($arg),*)
    }};
    ($body:ident, ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn wide512($($arg: $ty),*) $(-> $ret)? {
                $body($($arg),*)
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has the features the variant is compiled for.
                return unsafe { wide512($($arg),*) };
            }
        }
        $crate::engine::kernels::simd::dispatch!(avx2: $body, ($($arg: $ty),*) $(-> $ret)?)
    }};
}

pub(crate) use dispatch;
