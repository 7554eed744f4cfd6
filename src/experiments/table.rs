//! Rendering experiment rows as Markdown, CSV and JSON tables, aggregating several endpoint
//! pairs as mean +- std (population std over pairs, as the paper reports over split pairs).

use serde::Serialize;

use super::{mean_std, Row};

/// Published CIFAR-10 (5+5) joint accuracies of the ZipIt! paper (ResNet-20 x4, CLIP text-
/// embedding heads; Table 1a / Table 8), for `--paper`.
pub const PAPER_CIFAR10_5P5: [(&str, f64); 6] = [
    ("W.Avg", 43.0),
    ("Git Re-Basin", 46.2),
    ("Permute", 58.4),
    ("ZipIt!20/20", 79.1),
    ("ZipIt!13/20", 83.8),
    ("Ensemble", 87.4),
];

/// One aggregated table line.
#[derive(Clone, Debug, Serialize)]
pub struct Line {
    /// Row label.
    pub label: String,
    /// FLOPs in G (multiply-accumulates / 1e9).
    pub gflops: f64,
    /// Joint accuracy mean and std over pairs.
    pub joint: (f64, f64),
    /// Per-task accuracy mean and std (Task A, Task B, ...).
    pub tasks: Vec<(f64, f64)>,
    /// Average task accuracy mean and std.
    pub avg: (f64, f64),
    /// Pairs aggregated.
    pub pairs: usize,
    /// Paper joint accuracy for this row (ResNet-20 x4, CLIP heads), with --paper.
    pub paper_joint: Option<f64>,
}

/// Aggregates rows of several pairs (`pairs[p]` = rows of pair p, same labels in the same order).
pub fn aggregate(pairs: &[Vec<Row>], paper: bool) -> Vec<Line> {
    let Some(first) = pairs.first() else {
        return vec![];
    };
    first
        .iter()
        .enumerate()
        .map(|(i, r0)| {
            let rows: Vec<&Row> = pairs.iter().filter_map(|p| p.get(i)).collect();
            let col =
                |f: &dyn Fn(&Row) -> f64| mean_std(&rows.iter().map(|r| f(r)).collect::<Vec<_>>());
            let n_tasks = r0.accuracy.tasks.len();
            Line {
                label: r0.label.clone(),
                gflops: r0.flops as f64 / 1e9,
                joint: col(&|r| r.accuracy.joint),
                tasks: (0..n_tasks)
                    .map(|t| col(&|r| r.accuracy.tasks.get(t).map_or(0.0, |x| x.accuracy)))
                    .collect(),
                avg: col(&|r| r.accuracy.avg),
                pairs: rows.len(),
                paper_joint: if paper {
                    PAPER_CIFAR10_5P5
                        .iter()
                        .find(|(l, _)| *l == r0.label)
                        .map(|(_, v)| *v)
                } else {
                    None
                },
            }
        })
        .collect()
}

fn cell(v: (f64, f64), pairs: usize) -> String {
    if pairs > 1 {
        format!("{:.1} ± {:.1}", v.0, v.1)
    } else {
        format!("{:.1}", v.0)
    }
}

fn task_name(i: usize) -> String {
    if i < 26 {
        format!("Task {}", (b'A' + i as u8) as char)
    } else {
        format!("Task {i}")
    }
}

/// Markdown table.
pub fn markdown(lines: &[Line]) -> String {
    let n_tasks = lines.first().map_or(0, |l| l.tasks.len());
    let paper = lines.iter().any(|l| l.paper_joint.is_some());
    let mut h = vec!["Method".to_string(), "FLOPs (G)".into(), "Joint".into()];
    h.extend((0..n_tasks).map(task_name));
    h.push("Avg".into());
    if paper {
        h.push("Paper Joint (R20x4, CLIP)".into());
    }
    let mut s = format!(
        "| {} |\n|{}|\n",
        h.join(" | "),
        h.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for l in lines {
        let mut c = vec![
            l.label.clone(),
            format!("{:.3}", l.gflops),
            cell(l.joint, l.pairs),
        ];
        c.extend(l.tasks.iter().map(|t| cell(*t, l.pairs)));
        c.push(cell(l.avg, l.pairs));
        if paper {
            c.push(l.paper_joint.map_or("–".into(), |v| format!("{v:.1}")));
        }
        s.push_str(&format!("| {} |\n", c.join(" | ")));
    }
    s
}

/// CSV table (means and stds in separate columns).
pub fn csv(lines: &[Line]) -> String {
    let n_tasks = lines.first().map_or(0, |l| l.tasks.len());
    let mut h = vec![
        "method".to_string(),
        "gflops".into(),
        "joint".into(),
        "joint_std".into(),
    ];
    for i in 0..n_tasks {
        let t = (b'a' + i as u8) as char;
        h.push(format!("task_{t}"));
        h.push(format!("task_{t}_std"));
    }
    h.extend([
        "avg".into(),
        "avg_std".into(),
        "pairs".into(),
        "paper_joint".into(),
    ]);
    let mut s = h.join(",") + "\n";
    for l in lines {
        let mut c = vec![
            l.label.clone(),
            format!("{:.6}", l.gflops),
            format!("{:.4}", l.joint.0),
            format!("{:.4}", l.joint.1),
        ];
        for t in &l.tasks {
            c.push(format!("{:.4}", t.0));
            c.push(format!("{:.4}", t.1));
        }
        c.extend([
            format!("{:.4}", l.avg.0),
            format!("{:.4}", l.avg.1),
            l.pairs.to_string(),
            l.paper_joint.map_or(String::new(), |v| v.to_string()),
        ]);
        s.push_str(&(c.join(",") + "\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Accuracy, TaskAccuracy};

    fn row(label: &str, joint: f64) -> Row {
        Row {
            label: label.into(),
            stop: None,
            zipped_layers: None,
            total_layers: 20,
            flops: 2_000_000_000,
            accuracy: Accuracy {
                joint,
                tasks: vec![
                    TaskAccuracy {
                        classes: vec![0],
                        accuracy: 90.0,
                        loss: 0.0,
                    },
                    TaskAccuracy {
                        classes: vec![1],
                        accuracy: 80.0,
                        loss: 0.0,
                    },
                ],
                avg: 85.0,
                flops: 2_000_000_000,
                images: 10,
            },
            seconds: 0.0,
        }
    }

    #[test]
    fn aggregates_mean_and_population_std_over_pairs() {
        let lines = aggregate(&[vec![row("W.Avg", 40.0)], vec![row("W.Avg", 50.0)]], true);
        assert_eq!(lines[0].joint, (45.0, 5.0));
        assert_eq!(lines[0].paper_joint, Some(43.0));
        let md = markdown(&lines);
        assert!(
            md.contains(
                "| W.Avg | 2.000 | 45.0 ± 5.0 | 90.0 ± 0.0 | 80.0 ± 0.0 | 85.0 ± 0.0 | 43.0 |"
            ),
            "{md}"
        );
        let c = csv(&lines);
        assert_eq!(c.lines().next().unwrap(), "method,gflops,joint,joint_std,task_a,task_a_std,task_b,task_b_std,avg,avg_std,pairs,paper_joint");
        assert!(c
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("W.Avg,2.000000,45.0000,5.0000,"));
    }
}
