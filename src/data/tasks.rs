//! Class subsets ("tasks"): explicit lists (`0,1,2,3,4`), task lists (`0,1,2,3,4;5,6,7,8,9`) and
//! seeded random disjoint splits (`5+5` with a split seed; reference doc §5.4 recommends seeded,
//! recorded splits instead of the reference's unseeded ones).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, DataParam};

/// [`DataError::Classes`] for the list `list`.
fn classes_err(list: &str, msg: String) -> DataError {
    DataError::Classes {
        list: list.to_string(),
        msg,
    }
}

/// Parses `0,1,2` (or ranges, `0-4,7`) into class ids, checking each is below `n_classes`.
///
/// # Errors
/// [`DataError::Classes`] for a non-number, a duplicate or an id out of range.
pub fn parse_classes(s: &str, n_classes: usize) -> Result<Vec<usize>, DataError> {
    let mut ids = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| -> Result<usize, DataError> {
            t.trim()
                .parse()
                .map_err(|_| classes_err(s, format!("class `{part}` in `{s}` is not a class id")))
        };
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if lo > hi {
                    return Err(classes_err(
                        s,
                        format!("class range `{part}` in `{s}` is empty"),
                    ));
                }
                ids.extend(lo..=hi.min(lo.max(n_classes)));
            }
            None => ids.push(num(part)?),
        }
    }
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for c in ids {
        if c >= n_classes {
            return Err(classes_err(
                s,
                format!(
                    "class id {c} is out of range: the data has {n_classes} classes (0..{})",
                    n_classes.saturating_sub(1)
                ),
            ));
        }
        if !seen.insert(c) {
            return Err(classes_err(
                s,
                format!("class id {c} is listed twice in `{s}`"),
            ));
        }
        out.push(c);
    }
    if out.is_empty() {
        return Err(classes_err(s, format!("`{s}` lists no classes")));
    }
    Ok(out)
}

/// Parses `0,1,2;3,4` into disjoint tasks.
///
/// # Errors
/// As [`parse_classes`], plus an empty task (`0,1;;2`) and overlapping tasks.
pub fn parse_tasks(s: &str, n_classes: usize) -> Result<Vec<Vec<usize>>, DataError> {
    let mut tasks: Vec<Vec<usize>> = Vec::new();
    for (k, t) in s.split(';').enumerate() {
        if t.trim().is_empty() {
            return Err(DataError::param(
                DataParam::Tasks,
                s,
                format!(
                    "task {} is empty; expected class lists separated by `;`",
                    k + 1
                ),
            ));
        }
        tasks.push(
            parse_classes(t, n_classes)
                .map_err(|e| DataError::param(DataParam::Tasks, s, e.to_string()))?,
        );
    }
    let mut seen = Vec::new();
    for t in &tasks {
        for c in t {
            if seen.contains(c) {
                return Err(DataError::param(
                    DataParam::Tasks,
                    s,
                    format!("class {c} is in two tasks"),
                ));
            }
            seen.push(*c);
        }
    }
    if tasks.is_empty() {
        return Err(DataError::param(DataParam::Tasks, s, "lists no tasks"));
    }
    Ok(tasks)
}

/// A seeded random disjoint split of `0..n_classes`: `spec` like `5+5` gives two lists of 5
/// drawn from a shuffle with ChaCha8(`seed`); each list is sorted.
///
/// # Errors
/// [`DataError::Param`] when the parts do not add up to at most `n_classes`.
pub fn random_split(spec: &str, seed: u64, n_classes: usize) -> Result<Vec<Vec<usize>>, DataError> {
    let sizes: Vec<usize> = spec
        .split('+')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| DataError::param(DataParam::Split, spec, "expected sizes like 5+5"))?;
    let total: usize = sizes.iter().sum();
    if total > n_classes || sizes.contains(&0) {
        return Err(DataError::param(
            DataParam::Split,
            spec,
            format!("needs {total} classes, the data has {n_classes}"),
        ));
    }
    let mut ids: Vec<usize> = (0..n_classes).collect();
    ids.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut out = Vec::new();
    let mut at = 0;
    for s in sizes {
        let mut part = ids[at..at + s].to_vec();
        part.sort_unstable();
        out.push(part);
        at += s;
    }
    Ok(out)
}

/// Formats tasks as `0,1,2;3,4`.
pub fn format_tasks(tasks: &[Vec<usize>]) -> String {
    tasks
        .iter()
        .map(|t| {
            t.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_rejects_bad_ids() {
        assert_eq!(parse_classes("0, 3,5", 10).unwrap(), vec![0, 3, 5]);
        assert!(parse_classes("0,10", 10)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(parse_classes("1,1", 10).is_err());
        assert_eq!(parse_classes("0-2,5", 10).unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse_classes("0-999", 1000).unwrap().len(), 1000);
        assert!(parse_classes("3-1", 10).is_err());
        assert!(parse_classes("5-4000000000", 10)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(parse_classes("0-2,2", 10).is_err());
        assert!(parse_tasks("0,1;1,2", 10).is_err());
        assert_eq!(parse_tasks("0,1;2", 10).unwrap(), vec![vec![0, 1], vec![2]]);
    }

    #[test]
    fn random_split_is_seeded_and_disjoint() {
        let a = random_split("5+5", 7, 10).unwrap();
        assert_eq!(a, random_split("5+5", 7, 10).unwrap());
        let mut all: Vec<usize> = a.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert!(random_split("6+5", 7, 10).is_err());
    }
}
