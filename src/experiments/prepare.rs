//! What the experiment operations share: their inputs, the endpoints and data they load and
//! check once ([`prepare`]), the rows of the endpoints themselves, the endpoint groups of a
//! folder of pairs ([`find_groups`]), and the writers of their output files.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::table::{aggregate, markdown};
use super::{Context, Counters, Row};
use crate::collect::probe::{bn_batches, load_probe, probe_batches};
use crate::data::{ImageSet, SparseSet};
use crate::error::{ExperimentError, MergeError};
use crate::merge::{self, images, Batches, Endpoints, MergeSettings, Statistics};
use crate::progress::{phase, Observer};
use crate::system::runner::Runner;
use crate::util::write_atomic;

/// Where an experiment reads its images and runs.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// Probe folder (statistics and BN reset).
    pub probe_dir: PathBuf,
    /// Data root whose `test` split is evaluated.
    pub test_root: PathBuf,
    /// Pixel cache per folder, GiB ([`crate::data::images_in_cache`]).
    pub cache_gib: f64,
    /// Compute device.
    pub device: Runner,
    /// The backend's name (for the provenance block).
    pub backend: String,
    /// The command line (for the provenance block).
    pub command: String,
}

impl Inputs {
    /// The provenance block of an experiment on these inputs: the probe folder (its listing
    /// of `probe_total` images) and the test folder (`test_images` read; 0: not read), with
    /// `settings`.
    pub fn provenance(
        &self,
        probe_total: usize,
        test_images: usize,
        settings: &impl Serialize,
    ) -> crate::provenance::Provenance {
        use crate::provenance::{DataFolder, Provenance};
        let mut data = vec![DataFolder {
            role: "probe",
            path: self.probe_dir.display().to_string(),
            images: probe_total,
        }];
        if test_images > 0 {
            data.push(DataFolder::test_split(&self.test_root, test_images));
        }
        Provenance::new(&self.command, &self.backend, data, settings)
    }
}

/// One endpoint group after the endpoint BN reset and the statistics pass.
pub struct Prepared {
    /// The endpoints (BN reset).
    pub ep: Endpoints,
    /// BN-reset batches.
    pub bn: Batches,
    /// Probe batches.
    pub probe: Batches,
    /// Each endpoint's task.
    pub tasks: Vec<Vec<usize>>,
    /// Statistics of every feature space.
    pub stats: Statistics,
}

/// The probe set and the test set of `inputs`, prepared for the endpoints `ep`.
///
/// # Errors
/// [`MergeError::Data`] naming the folder.
pub fn load_data(
    inputs: &Inputs,
    s: &MergeSettings,
    ep: &Endpoints,
    obs: &mut dyn Observer,
) -> Result<(SparseSet, ImageSet), MergeError> {
    let prep = ep.prep();
    let train = load_probe(&inputs.probe_dir, prep, inputs.cache_gib, &s.draws(), obs)?;
    let test =
        crate::data::load_split(&inputs.test_root, "test", prep, inputs.cache_gib, None, obs)?;
    Ok((train, test))
}

/// The task (class ids of the first head) of each endpoint, checked against the test set: every
/// class must be in it and have images, as evaluation requires.
///
/// # Errors
/// [`MergeError::Data`] naming the missing class.
pub fn tasks_checked(ep: &Endpoints, test: &ImageSet) -> Result<Vec<Vec<usize>>, MergeError> {
    let tasks = ep.tasks();
    crate::eval::runner::check_evaluation(&ep.heads(), test, &tasks)?;
    Ok(tasks)
}

/// Resets the endpoints' BN and collects the statistics of every space on the probe draw.
///
/// # Errors
/// As [`merge::statistics`].
pub fn prepare(
    mut ep: Endpoints,
    tasks: Vec<Vec<usize>>,
    s: &MergeSettings,
    train: &SparseSet,
    device: &Runner,
    obs: &mut dyn Observer,
    counters: &mut Counters,
) -> Result<Prepared, MergeError> {
    let bn = bn_batches(train, s.draws().bn.as_ref())?;
    let probe = probe_batches(train, &s.probe_options(), obs)?;
    s.reset_endpoints(&mut ep, &bn, device, obs)?;
    let stats = phase(obs, "statistics", images(&probe) as u64, |p| {
        merge::statistics(&ep, &probe, device, p)
    })?;
    counters.statistics_passes += stats.passes;
    merge::warn_dead_units(&stats, &ep.spec.spaces, obs);
    Ok(Prepared {
        ep,
        bn,
        probe,
        tasks,
        stats,
    })
}

impl Prepared {
    /// The experiment context of these endpoints on `test`.
    pub fn context<'a>(
        &'a self,
        test: &'a ImageSet,
        s: &MergeSettings,
        device: &'a Runner,
    ) -> Context<'a> {
        Context::new(
            &self.ep,
            &self.bn,
            test,
            &self.tasks,
            s.batch_size,
            device,
            s.merge_eps,
        )
        .with_probe(&self.probe)
    }

    /// Test images of the tasks (what one evaluation runs).
    fn eval_images(&self, test: &ImageSet) -> u64 {
        (0..test.len())
            .filter(|&i| self.tasks.iter().any(|t| t.contains(&test.labels[i])))
            .count() as u64
    }
}

/// Runs `f` as the row phase `label` over the test images of `p`.
pub(crate) fn row(
    obs: &mut dyn Observer,
    p: &Prepared,
    test: &ImageSet,
    label: &str,
    f: impl FnOnce(&mut dyn FnMut(usize)) -> Result<Row, MergeError>,
) -> Result<Row, MergeError> {
    phase(obs, label, p.eval_images(test), f)
}

/// The row of each endpoint alone (`Model A`, `Model B`, ...).
pub(crate) fn endpoint_rows(
    obs: &mut dyn Observer,
    p: &Prepared,
    test: &ImageSet,
    exp: &Context<'_>,
) -> Result<Vec<Row>, MergeError> {
    (0..p.ep.n())
        .map(|i| {
            let label = format!("Model {}", (b'A' + (i % 26) as u8) as char);
            row(obs, p, test, &label, |pr| exp.endpoint_row(i, &label, pr))
        })
        .collect()
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), ExperimentError> {
    write_atomic(path, bytes).map_err(|e| ExperimentError::output(path, e))
}

pub(crate) fn json_bytes(v: &impl Serialize) -> Result<Vec<u8>, ExperimentError> {
    serde_json::to_vec_pretty(v).map_err(|e| ExperimentError::Output {
        path: "(report)".into(),
        msg: e.to_string(),
    })
}

/// The endpoint groups found in a folder ([`find_groups`]).
#[derive(Clone, Debug, Default)]
pub struct FoundGroups {
    /// The complete groups, by name, with their member folders in letter order.
    pub groups: Vec<(String, Vec<PathBuf>)>,
    /// Every member folder or group that cannot be used, with why (one line each): a broken
    /// symbolic link, a member without `manifest.json`, a missing member, a member after a gap,
    /// a group of one.
    pub skipped: Vec<String>,
}

/// Why the entry `path` (named like a member) cannot be a member, if it cannot.
fn member_problem(path: &Path) -> Option<&'static str> {
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match std::fs::metadata(path) {
        Err(_) if link => Some("a broken symbolic link"),
        Err(_) => Some("cannot be read"),
        Ok(m) if !m.is_dir() => Some("not a folder"),
        Ok(_) if !path.join("manifest.json").is_file() => Some("no manifest.json"),
        Ok(_) => None,
    }
}

/// The endpoint groups of a folder: model folders named `<name>-a`, `<name>-b`, ... with
/// consecutive letters from `a` (at least two), those whose name contains `filter` when
/// given. Entries not named `<name>-<letter>` are not members and are passed over. A group
/// with any unusable member (broken link, no manifest), a missing letter (`x-a`, `x-c`: no
/// `x-b`), a member after a gap (`x-d` after `x-a`, `x-b`) or one member only is not run, and
/// is listed in [`FoundGroups::skipped`] with the reason, for the caller to warn about.
///
/// # Errors
/// [`ExperimentError::Groups`] when the folder cannot be listed, holds no complete group (the
/// message then names every skipped member and why), or its groups differ in size.
pub fn find_groups(dir: &Path, filter: Option<&str>) -> Result<FoundGroups, ExperimentError> {
    let groups_err = |msg: &str| ExperimentError::Groups {
        dir: dir.display().to_string(),
        msg: msg.into(),
    };
    let mut members: std::collections::BTreeMap<String, Vec<(char, String)>> =
        std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir)
        .map_err(|e| groups_err(&format!("cannot list endpoint groups: {e}")))?
        .filter_map(|e| e.ok())
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((base, letter)) = name.rsplit_once('-') else {
            continue;
        };
        let mut chars = letter.chars();
        let (Some(l @ 'a'..='z'), None) = (chars.next(), chars.next()) else {
            continue;
        };
        if base.is_empty() || filter.is_some_and(|f| !base.contains(f)) {
            continue;
        }
        members
            .entry(base.to_string())
            .or_default()
            .push((l, name.clone()));
    }
    let mut found = FoundGroups::default();
    for (base, mut ms) in members {
        ms.sort();
        let mut why: Vec<String> = ms
            .iter()
            .filter_map(|(_, n)| member_problem(&dir.join(n)).map(|p| format!("{n}: {p}")))
            .collect();
        let letters: Vec<char> = ms.iter().map(|(l, _)| *l).collect();
        let run = letters
            .iter()
            .zip('a'..='z')
            .take_while(|(l, want)| *l == want)
            .count();
        if run < letters.len() {
            let gap = char::from(b'a' + run as u8);
            let after: Vec<String> = ms[run..].iter().map(|(_, n)| n.clone()).collect();
            why.push(format!(
                "{base}: missing member {base}-{gap}, so {} cannot be used",
                after.join(", ")
            ));
        } else if letters.len() < 2 {
            why.push(format!("{base}: only one member ({base}-a)"));
        }
        if why.is_empty() {
            let group = ms.iter().map(|(_, n)| dir.join(n)).collect();
            found.groups.push((base, group));
        } else {
            found
                .skipped
                .push(format!("group {base} skipped: {}", why.join("; ")));
        }
    }
    if found.groups.is_empty() {
        let mut msg =
            "no complete endpoint groups (model folders named <name>-a, <name>-b, ...)".to_string();
        if !found.skipped.is_empty() {
            msg += &format!(": {}", found.skipped.join("; "));
        }
        return Err(groups_err(&msg));
    }
    let g0 = &found.groups[0];
    if let Some(g) = found.groups.iter().find(|g| g.1.len() != g0.1.len()) {
        return Err(groups_err(&format!(
            "the endpoint groups differ in size ({} has {}, {} has {}): pick groups of one size with --filter",
            g0.0,
            g0.1.len(),
            g.0,
            g.1.len()
        )));
    }
    Ok(found)
}

/// The aggregated markdown table of one group's rows.
pub fn rows_markdown(rows: &[Row]) -> String {
    markdown(&aggregate(&[rows.to_vec()], false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of endpoint groups: complete groups in letter order, a group with a gap, a
    /// group of one, a member without manifest and a non-member name, each said once.
    #[test]
    fn find_groups_keeps_complete_groups_and_says_why_others_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let member = |name: &str, manifest: bool| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            if manifest {
                std::fs::write(d.join("manifest.json"), "{}").unwrap();
            }
        };
        for n in ["x-b", "x-a", "y-a", "y-c", "z-a", "w-a", "w-b"] {
            member(n, true);
        }
        member("v-a", true);
        member("v-b", false);
        member("notes", true);
        let f = find_groups(dir.path(), None).unwrap();
        let names: Vec<&str> = f.groups.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["w", "x"]);
        assert_eq!(
            f.groups[1].1,
            vec![dir.path().join("x-a"), dir.path().join("x-b")],
            "members in letter order"
        );
        let skipped = f.skipped.join("\n");
        assert!(
            skipped.contains("y: missing member y-b, so y-c cannot be used"),
            "{skipped}"
        );
        assert!(skipped.contains("z: only one member (z-a)"), "{skipped}");
        assert!(skipped.contains("v-b: no manifest.json"), "{skipped}");
        assert_eq!(f.skipped.len(), 3, "{skipped}");
        // --filter keeps only names containing it; no group left is an error naming the folder
        let f = find_groups(dir.path(), Some("w")).unwrap();
        assert_eq!(f.groups.len(), 1);
        let e = find_groups(dir.path(), Some("q")).unwrap_err().to_string();
        assert!(e.contains("no complete endpoint groups"), "{e}");
    }

    /// Groups of different sizes cannot be aggregated into one table.
    #[test]
    fn find_groups_refuses_groups_of_different_sizes() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["p-a", "p-b", "q-a", "q-b", "q-c"] {
            let d = dir.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("manifest.json"), "{}").unwrap();
        }
        let e = find_groups(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("differ in size (p has 2, q has 3)"), "{e}");
    }
}
