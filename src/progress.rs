//! What a long library call reports while it runs: phases with a unit count (images), their
//! progress, and notes or warnings for the user. The library never prints; the CLI's printer
//! implements [`Observer`] (progress bars, `-q`, `--json`), a Rust caller may pass [`Silent`].

/// Receives the progress of a long library call ([`crate::ops::merge::run`],
/// [`crate::ops::sweep`], ...). Every method has a do-nothing default.
pub trait Observer {
    /// A phase named `label` (`statistics`, `BN reset`, a table row's label, ...) starts with
    /// `total` units of work (images, or grid cells).
    fn begin(&mut self, _label: &str, _total: u64) {}
    /// `n` more units of the current phase are done.
    fn advance(&mut self, _n: u64) {}
    /// A short status of the current phase (running loss and accuracy), shown next to its
    /// progress.
    fn status(&mut self, _text: &str) {}
    /// The current phase is over.
    fn end(&mut self) {}
    /// An informational line (what was loaded, from where, how long it took).
    fn info(&mut self, _line: &str) {}
    /// A line the user should see even in quiet mode: a `note:` on an adjusted setting or a
    /// `warning:` on suspicious data (dead units).
    fn warn(&mut self, _line: &str) {}
}

/// An [`Observer`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Observer for Silent {}

/// Runs `f` as the phase `label` of `total` units on `obs`, handing `f` a progress callback
/// that takes unit counts (as the engine's passes call it).
pub fn phase<T>(
    obs: &mut dyn Observer,
    label: &str,
    total: u64,
    f: impl FnOnce(&mut dyn FnMut(usize)) -> T,
) -> T {
    obs.begin(label, total);
    let out = f(&mut |k| obs.advance(k as u64));
    obs.end();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log(Vec<String>);

    impl Observer for Log {
        fn begin(&mut self, label: &str, total: u64) {
            self.0.push(format!("begin {label} {total}"));
        }
        fn advance(&mut self, n: u64) {
            self.0.push(format!("+{n}"));
        }
        fn end(&mut self) {
            self.0.push("end".into());
        }
    }

    #[test]
    fn phase_reports_begin_progress_and_end_in_order() {
        let mut log = Log::default();
        let v = phase(&mut log, "statistics", 5, |p| {
            p(2);
            p(3);
            7
        });
        assert_eq!(v, 7);
        assert_eq!(log.0, ["begin statistics 5", "+2", "+3", "end"]);
    }
}
