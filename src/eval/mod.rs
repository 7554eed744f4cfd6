//! Evaluation protocol of the reference (doc §5): Joint accuracy (task unknown), per-task
//! accuracy (task known) and their average, for single models, multi-head models and ensembles,
//! with text-embedding and logit heads.
//!
//! Rules (§5.1-5.3, quirk 13): for every task s a head is chosen (the one trained on most of the
//! task's classes) and its logits restricted to the task's classes give `L_s`. Per-task
//! prediction is `argmax L_task(y)`. Joint prediction is the argmax over all tasks of
//! `softmax(L_s)` (temperature 100 is already inside text-head logits) — except for a *single*
//! text head, where the raw cosines are compared (the reference's behaviour).

pub mod runner;

use serde::Serialize;

impl Accuracy {
    /// The accuracy as a table under `label`: FLOPs, joint accuracy, each task's, their
    /// average (one line each).
    pub fn table(&self, label: &str) -> String {
        let mut out = format!(
            "{label}\n  FLOPs (MACs/image): {} ({:.3} G)\n  Joint:    {:6.2}%  ({} images)\n",
            self.flops,
            self.flops as f64 / 1e9,
            self.joint,
            self.images
        );
        for (i, t) in self.tasks.iter().enumerate() {
            let name = if self.tasks.len() <= 26 {
                ((b'A' + i as u8) as char).to_string()
            } else {
                i.to_string()
            };
            out += &format!(
                "  Task {name}:   {:6.2}%  classes {:?}\n",
                t.accuracy, t.classes
            );
        }
        out + &format!("  Avg:      {:6.2}%\n", self.avg)
    }
}

/// How the joint prediction compares scores across tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JointRule {
    /// Compare raw logits (single text-embedding head: cosines).
    Raw,
    /// Compare per-task softmax probabilities (multi-head, ensembles, logit heads).
    TaskSoftmax,
}

/// Counters of one evaluation.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Images seen.
    pub images: usize,
    /// Joint correct.
    pub joint_correct: usize,
    /// Per task: (correct, images of that task).
    pub task: Vec<(usize, usize)>,
    /// Per task: the summed cross-entropy (nats) of its images, task known.
    pub task_loss: Vec<f64>,
}

/// Accuracy report of one evaluation; the JSON keys are a stable interface.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Accuracy {
    /// Joint accuracy, percent.
    pub joint: f64,
    /// Per-task accuracies.
    pub tasks: Vec<TaskAccuracy>,
    /// Mean of the per-task accuracies, percent.
    pub avg: f64,
    /// Forward multiply-accumulates per image of the whole system.
    pub flops: u64,
    /// Images evaluated.
    pub images: usize,
}

/// Accuracy on one task.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TaskAccuracy {
    /// Class ids of the task.
    pub classes: Vec<usize>,
    /// Accuracy on the task's images with the task known, percent.
    pub accuracy: f64,
    /// Mean cross-entropy (nats) of the softmax over the task's classes on its images, task
    /// known (the loss of interpolation barriers).
    pub loss: f64,
}

impl Tally {
    /// Empty tally for `n_tasks` tasks.
    pub fn new(n_tasks: usize) -> Self {
        Self {
            images: 0,
            joint_correct: 0,
            task: vec![(0, 0); n_tasks],
            task_loss: vec![0.0; n_tasks],
        }
    }

    /// Adds one batch. `task_logits[s]` holds, per image, the logits of task s's classes
    /// (`tasks[s]` order). Images whose label is in no task are skipped (§5.2). When tasks
    /// share classes (e.g. two ImageNet-1k models), an image counts for every task holding its
    /// label; the joint accuracy counts it once.
    pub fn add(
        &mut self,
        tasks: &[Vec<usize>],
        task_logits: &[Vec<Vec<f32>>],
        labels: &[usize],
        rule: JointRule,
    ) {
        for (b, &y) in labels.iter().enumerate() {
            if !tasks.iter().any(|t| t.contains(&y)) {
                continue;
            }
            self.images += 1;
            // per-task
            for (ty, t) in tasks.iter().enumerate().filter(|(_, t)| t.contains(&y)) {
                let z = &task_logits[ty][b];
                let k = argmax(z);
                self.task[ty].1 += 1;
                if t[k] == y {
                    self.task[ty].0 += 1;
                }
                // cross-entropy: logsumexp(z) - z_y, in f64
                if let Some(iy) = t.iter().position(|&c| c == y) {
                    let m = z.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
                    let lse = m + z.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
                    self.task_loss[ty] += lse - z[iy] as f64;
                }
            }
            // joint
            let mut best = (f32::NEG_INFINITY, usize::MAX);
            for (s, t) in tasks.iter().enumerate() {
                let scores = match rule {
                    JointRule::Raw => task_logits[s][b].clone(),
                    JointRule::TaskSoftmax => softmax(&task_logits[s][b]),
                };
                for (i, v) in scores.iter().enumerate() {
                    if *v > best.0 {
                        best = (*v, t[i]);
                    }
                }
            }
            if best.1 == y {
                self.joint_correct += 1;
            }
        }
    }

    /// Final percentages.
    pub fn accuracy(&self, tasks: &[Vec<usize>], flops: u64) -> Accuracy {
        let pct = |c: usize, n: usize| {
            if n == 0 {
                0.0
            } else {
                100.0 * c as f64 / n as f64
            }
        };
        let per: Vec<TaskAccuracy> = tasks
            .iter()
            .zip(&self.task)
            .zip(&self.task_loss)
            .map(|((t, &(c, n)), &l)| TaskAccuracy {
                classes: t.clone(),
                accuracy: pct(c, n),
                loss: if n == 0 { 0.0 } else { l / n as f64 },
            })
            .collect();
        let avg = per.iter().map(|t| t.accuracy).sum::<f64>() / per.len().max(1) as f64;
        Accuracy {
            joint: pct(self.joint_correct, self.images),
            tasks: per,
            avg,
            flops,
            images: self.images,
        }
    }
}

/// Index of the first maximum.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Numerically stable softmax.
pub fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T13: evaluation math on hand-made logits with splits [[3,0],[1,2]].
    #[test]
    fn t13_joint_and_task_accuracy() {
        let tasks = vec![vec![3, 0], vec![1, 2]];
        // task_logits[s][image]: image 0 has label 3 (task 0), image 1 has label 2 (task 1).
        let logits = vec![
            vec![vec![10.0, 0.0], vec![60.0, 0.0]], // task 0 (classes 3, 0)
            vec![vec![50.0, 49.9], vec![1.0, 3.0]], // task 1 (classes 1, 2)
        ];
        let labels = [3, 2];
        let mut soft = Tally::new(2);
        soft.add(&tasks, &logits, &labels, JointRule::TaskSoftmax);
        let a = soft.accuracy(&tasks, 0);
        // per-task: image 0, task 0 [10, 0] -> idx 0 = class 3 (correct);
        //           image 1, task 1 [1, 3]  -> idx 1 = class 2 (correct).
        assert_eq!(a.tasks[0].accuracy, 100.0);
        assert_eq!(a.tasks[1].accuracy, 100.0);
        // joint (softmax per task): image 0: softmax[10,0] = [0.99995, ..] beats
        //   softmax[50,49.9] = [0.525, 0.475] -> class 3 (correct);
        // image 1: softmax[60,0] ~ [1.0, ..] (class 3) beats softmax[1,3] = [0.12, 0.88] -> wrong.
        assert_eq!(a.joint, 50.0);
        let mut raw = Tally::new(2);
        raw.add(&tasks, &logits, &labels, JointRule::Raw);
        // raw: image 0: max(10, 0, 50, 49.9) = 50 -> class 1 (wrong);
        //      image 1: max(60, 0, 1, 3) = 60 -> class 3 (wrong).
        assert_eq!(raw.accuracy(&tasks, 0).joint, 0.0);
        assert_eq!(a.avg, 100.0);
    }

    /// Overlapping tasks (two models of the same classes): each image counts for both tasks,
    /// once for the joint accuracy.
    #[test]
    fn overlapping_tasks_count_each_image_for_every_task() {
        let tasks = vec![vec![0, 1], vec![0, 1]];
        // one image of class 1: task 0 head says class 1 (right), task 1 head class 0 (wrong)
        let logits = vec![vec![vec![0.0, 5.0]], vec![vec![2.0, 1.0]]];
        let mut t = Tally::new(2);
        t.add(&tasks, &logits, &[1], JointRule::TaskSoftmax);
        let a = t.accuracy(&tasks, 0);
        assert_eq!((a.tasks[0].accuracy, a.tasks[1].accuracy), (100.0, 0.0));
        assert_eq!(a.images, 1);
        // joint: softmax [0.0067, 0.9933] beats [0.73, 0.27] -> class 1
        assert_eq!(a.joint, 100.0);
    }

    /// Hand-derived cross-entropy: task [0, 1], logits [0, ln 3] (softmax [1/4, 3/4]); label 1
    /// gives -ln(3/4), label 0 gives -ln(1/4); the mean over both is ln(4/sqrt(3)).
    #[test]
    fn task_loss_is_the_mean_cross_entropy() {
        let tasks = vec![vec![0, 1]];
        let z = vec![vec![vec![0.0f32, 3f32.ln()], vec![0.0, 3f32.ln()]]];
        let mut t = Tally::new(1);
        t.add(&tasks, &z, &[1, 0], JointRule::Raw);
        let a = t.accuracy(&tasks, 0);
        let want = (4.0f64 / 3f64.sqrt()).ln();
        assert!(
            (a.tasks[0].loss - want).abs() < 1e-6,
            "{} vs {want}",
            a.tasks[0].loss
        );
        assert_eq!(a.tasks[0].accuracy, 50.0);
    }
}
