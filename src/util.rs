//! Small helpers shared by several layers.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, then renames it into
/// place, so readers never see a half-written file. Creates the parent folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.flush()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes a directory atomically: `fill` populates a temporary sibling folder, which is then
/// renamed to `dir` (replacing an existing one). On error nothing is left at `dir`'s new state.
pub fn write_dir_atomic<E: From<std::io::Error>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".zipmerge-tmp-")
        .tempdir_in(parent)?;
    fill(tmp.path())?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let p = tmp.keep();
    std::fs::rename(&p, dir)?;
    Ok(())
}

/// Peak resident set size of this process so far, in MiB (`getrusage`'s `ru_maxrss`); `None`
/// where the platform does not report it.
pub fn peak_rss_mb() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrusage writes into the zeroed struct we own.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            return Some(u.ru_maxrss as f64 / 1024.0); // KiB on Linux
        }
    }
    None
}
