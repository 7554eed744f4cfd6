//! How an output was made, in one block every report carries (`provenance`): zipmerge's
//! version and the git commit it was built from, the command line, the date, the machine, the
//! backend, the data folders with their image counts, and every setting. Issue 28, item 3.

use serde::Serialize;

/// A data folder an operation read, with what it was for.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DataFolder {
    /// What the folder was for (`probe`, `validation`, `test`, ...).
    pub role: &'static str,
    /// The folder as given.
    pub path: String,
    /// Images of it the operation used (a probe folder: its whole listing).
    pub images: usize,
}

impl DataFolder {
    /// The `test/` split of the data root `root`, of which `images` were evaluated.
    pub fn test_split(root: &std::path::Path, images: usize) -> Self {
        Self {
            role: "test",
            path: crate::data::split_dir(root, "test").display().to_string(),
            images,
        }
    }
}

/// The provenance block (module docs).
#[derive(Clone, Debug, Serialize)]
pub struct Provenance {
    /// zipmerge's version.
    pub zipmerge_version: &'static str,
    /// The git commit the binary was built from (`None` outside a checkout).
    pub git_commit: Option<&'static str>,
    /// The command line.
    pub command: String,
    /// When the operation ran, UTC (`2026-12-06T10:41:07Z`).
    pub date_utc: String,
    /// The CPU and its logical processors.
    pub machine: String,
    /// The compute backend.
    pub backend: String,
    /// The data folders read.
    pub data: Vec<DataFolder>,
    /// Every setting of the operation.
    pub settings: serde_json::Value,
}

impl Provenance {
    /// The block of an operation run by `command` on `backend` over `data` with `settings`,
    /// dated now.
    pub fn new(
        command: &str,
        backend: &str,
        data: Vec<DataFolder>,
        settings: &impl Serialize,
    ) -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            zipmerge_version: env!("CARGO_PKG_VERSION"),
            git_commit: option_env!("ZIPMERGE_GIT_COMMIT"),
            command: command.into(),
            date_utc: utc_date(secs),
            machine: machine(),
            backend: backend.into(),
            data,
            settings: serde_json::to_value(settings).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (Hinnant's civil-from-days).
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The CPU model (`/proc/cpuinfo`, where there is one) and the logical processors.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {threads} logical processors")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-checked dates: the epoch, a leap day, and 2026-12-06 09:33:44 (1796549624 s).
    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_date(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_date(1_796_549_624), "2026-12-06T09:33:44Z");
    }
}
