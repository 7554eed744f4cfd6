//! Small helpers shared by several layers.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, then renames it into
/// place, so readers never see a half-written file. Creates the parent folder if needed. An
/// existing `path` that is not a regular file (a folder, device node, FIFO or socket, links
/// followed) is never replaced: the rename would swap a device node for a regular file.
///
/// # Errors
/// The first I/O error, naming the path; `InvalidInput` for a path that is not a regular file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}: exists and is not a regular file; it is never replaced",
                path.display()
            ),
        ));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| with_path(e, dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| with_path(e, dir))?;
    tmp.write_all(bytes).map_err(|e| with_path(e, path))?;
    tmp.flush().map_err(|e| with_path(e, path))?;
    // a temporary file is created 0600; the result is an ordinary output, readable as the
    // model files are (0644)
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(|e| with_path(e, path))?;
    }
    tmp.persist(path).map_err(|e| with_path(e.error, path))?;
    Ok(())
}

/// Writes a directory atomically: `fill` populates a temporary sibling folder, which is then
/// renamed to `dir`. An existing `dir` is replaced safely: it is first renamed aside, the new
/// folder renamed in, and only then is the old one deleted; if the second rename fails the old
/// folder is put back. On any failure the temporary folder is removed, so nothing partial is
/// left beside `dir` and an existing `dir` survives.
///
/// # Errors
/// The first I/O error, naming the path it concerns, or `fill`'s error.
pub fn write_dir_atomic<E: From<std::io::Error>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".zipmerge-tmp-")
        .tempdir_in(parent)
        .map_err(|e| with_path(e, parent))?;
    fill(tmp.path())?;
    // `tmp` stays owned (and is deleted on drop) until the new folder is in place
    let aside = if dir.exists() {
        let old = tempfile::Builder::new()
            .prefix(".zipmerge-old-")
            .tempdir_in(parent)
            .map_err(|e| with_path(e, parent))?
            .keep();
        // rename over the (empty) placeholder folder we just made
        if let Err(e) = std::fs::rename(dir, &old) {
            let _ = std::fs::remove_dir(&old);
            return Err(with_path(e, dir).into());
        }
        Some(old)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(tmp.path(), dir) {
        if let Some(old) = &aside {
            let _ = std::fs::rename(old, dir);
        }
        return Err(with_path(e, dir).into());
    }
    let _ = tmp.keep();
    if let Some(old) = aside {
        let _ = std::fs::remove_dir_all(old);
    }
    Ok(())
}

/// An I/O error whose message names `path` (the standard messages do not).
pub fn with_path(e: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A message as one line: line breaks inside (decoder or header text quoted in a message)
/// become `; `, runs of blanks one space.
pub fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
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

/// A file or folder shipped in the zipmerge checkout (`datasets/cifar10-sample`, the class
/// embeddings): `rel` when it exists from the working directory, else the same path in the
/// checkout the binary was built from (so commands run from any directory find their
/// defaults), else `rel` (its error then names it).
pub fn shipped(rel: &str) -> std::path::PathBuf {
    let here = std::path::Path::new(rel);
    if here.exists() {
        return here.to_path_buf();
    }
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if built.exists() {
        built
    } else {
        here.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn folder_replacement_is_all_or_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("model");
        let put = |text: &'static str| {
            move |d: &Path| -> std::io::Result<()> { std::fs::write(d.join("f"), text) }
        };
        write_dir_atomic(&dir, put("one")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "one");
        // replacing: the new content, no temporary or old folder left beside it
        write_dir_atomic(&dir, put("two")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "two");
        assert_eq!(names(root.path()), ["model"]);
        // a failing fill: the old folder survives, nothing else is left
        let r = write_dir_atomic(&dir, |d: &Path| -> std::io::Result<()> {
            std::fs::write(d.join("f"), "half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_to_string(dir.join("f")).unwrap(), "two");
        assert_eq!(names(root.path()), ["model"]);
        // a failing final rename (name too long): nothing left, error names the path
        let long = root.path().join("n".repeat(300));
        let e = write_dir_atomic(&long, put("x")).unwrap_err().to_string();
        assert!(e.contains("nnnn"), "{e}");
        assert_eq!(names(root.path()), ["model"]);
    }
}
