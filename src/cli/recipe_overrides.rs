//! `zipmerge merge --recipe FILE`: the recipe with the flags given beside it applied, each
//! override noted, and a flag that cannot apply to the recipe's family refused.

use std::path::Path;

use anyhow::Result;

use zipmerge::merge::{self, Combine, EvalPlan, Method, Recipe, Similarity};

use super::common::{data_root, merge_error, tasks_option, usage};
use super::merge_args::{MergeArgs, MergeSettings, DEFAULT_DUAL_LAMBDA};
use super::printer::Printer;

/// The recipe of `--recipe path` with the flags given beside it (`given`) applied, each
/// override noted. A flag that cannot apply to the recipe (an alignment option on a
/// task-vector recipe, `--alpha` on a Permute recipe) is a usage error, never ignored.
pub fn recipe_with_overrides(
    a: &MergeArgs,
    path: &Path,
    given: &std::collections::BTreeSet<String>,
    p: &mut Printer,
) -> Result<Recipe> {
    use zipmerge::progress::Observer;
    let mut r = Recipe::read(path).map_err(merge_error)?;
    let has = |f: &str| given.contains(f);
    let mut notes: Vec<String> = Vec::new();
    let mut note = |flag: &str, now: String, was: String| {
        if now != was {
            notes.push(format!("{flag} {now} overrides the recipe's {was}"));
        }
    };
    let s = &a.settings;
    let root = data_root(a.io.data.as_deref());
    if has("--model") {
        note(
            "--model",
            format!("{:?}", a.models),
            format!("{:?}", r.models),
        );
        r.models = a.models.clone();
    }
    if has("--probe") || has("--data") {
        let dir = s.probe_dir(&root);
        note(
            "--probe",
            dir.display().to_string(),
            r.probe_dir.display().to_string(),
        );
        r.probe_dir = dir;
    }
    if has("--no-eval") {
        r.eval = None;
    } else if has("--data") || has("--eval-data") || has("--tasks") {
        let eval = EvalPlan {
            root: a.io.eval_data.clone().unwrap_or(root),
            tasks: tasks_option(&a.tasks)?,
        };
        note(
            "--data/--eval-data/--tasks",
            format!("{eval:?}"),
            format!("{:?}", r.eval),
        );
        r.eval = Some(eval);
    }
    match &mut r.combine {
        Combine::Align { stop, settings } => {
            if let Some(f) = a.task_vectors.given().first() {
                return Err(usage(format!(
                    "{f} does not apply to --recipe {}: it replays an aligning merge",
                    path.display()
                )));
            }
            if has("--stop") {
                note("--stop", a.stop.clone(), stop.clone());
                *stop = a.stop.clone();
            }
            override_align(s, settings, given, &mut note)?;
        }
        Combine::TaskVector {
            base,
            bn_reset_images,
            batch_size,
            seed,
            settings,
        } => {
            let align_only = [
                "--stop",
                "--method",
                "--alpha",
                "--beta",
                "--cca-reg",
                "--merge-eps",
                "--similarity",
                "--dual-lambda",
                "--repair",
                "--refit",
                "--refit-ridge",
                "--probe-images",
                "--no-probe-augment",
                "--no-endpoint-bn-reset",
                "--no-rebasin-bn-reset",
            ];
            let knobs = [
                "--lambda",
                "--density",
                "--drop",
                "--weights",
                "--trim",
                "--sign",
                "--disjoint",
            ];
            if let Some(f) = align_only.iter().chain(&knobs).find(|f| has(f)) {
                return Err(usage(format!(
                    "{f} does not apply to --recipe {}: it replays a task-vector merge (edit the recipe's settings to change its method or knobs)",
                    path.display()
                )));
            }
            if let (true, Some(b)) = (has("--base"), &a.task_vectors.base) {
                note(
                    "--base",
                    b.display().to_string(),
                    base.display().to_string(),
                );
                *base = b.clone();
            }
            if has("--bn-reset-images") {
                note(
                    "--bn-reset-images",
                    format!("{:?}", s.bn_reset_images.0),
                    format!("{bn_reset_images:?}"),
                );
                *bn_reset_images = s.bn_reset_images.0;
            }
            if has("--batch-size") {
                note(
                    "--batch-size",
                    s.batch_size.to_string(),
                    batch_size.to_string(),
                );
                *batch_size = s.batch_size;
            }
            if has("--seed") {
                note("--seed", s.seed.to_string(), seed.to_string());
                *seed = s.seed;
                settings.seed = s.seed;
            }
        }
    }
    for n in &notes {
        p.warn(&format!("note: {n} (--recipe {})", path.display()));
    }
    r.check().map_err(merge_error)?;
    Ok(r)
}

/// The aligning recipe's settings `rs` with the flags of `s` given on the command line
/// (`given`) applied through `note`.
fn override_align(
    s: &MergeSettings,
    rs: &mut merge::MergeSettings,
    given: &std::collections::BTreeSet<String>,
    note: &mut dyn FnMut(&str, String, String),
) -> Result<()> {
    let has = |f: &str| given.contains(f);
    let onoff = |b: bool| if b { "on" } else { "off" }.to_string();
    if has("--seed") {
        note("--seed", s.seed.to_string(), rs.seed.to_string());
        rs.seed = s.seed;
        if let Method::GitRebasin { seed } = &mut rs.method {
            *seed = s.seed;
        }
    }
    let m = &s.matcher;
    if has("--method") {
        let method = m.method(rs.seed)?;
        note(
            "--method",
            format!("{method:?}"),
            format!("{:?}", rs.method),
        );
        rs.method = method;
    } else {
        for (flag, v) in [
            ("--alpha", m.alpha),
            ("--beta", m.beta),
            ("--cca-reg", m.cca_reg),
        ] {
            let Some(v) = v else { continue };
            let was = format!("{:?}", rs.method);
            rs.method = match (flag, rs.method.clone()) {
                ("--alpha", Method::Zipit { beta, .. }) => Method::Zipit { alpha: v, beta },
                ("--beta", Method::Zipit { alpha, .. }) => Method::Zipit { alpha, beta: v },
                ("--cca-reg", Method::Cca { .. }) => Method::Cca { reg: v },
                (_, other) => {
                    return Err(usage(format!(
                        "{flag} does not apply to the recipe's method {}",
                        other.label()
                    )))
                }
            };
            note(flag, format!("{:?}", rs.method), was);
        }
    }
    if has("--merge-eps") {
        note(
            "--merge-eps",
            m.merge_eps.to_string(),
            rs.merge_eps.to_string(),
        );
        rs.merge_eps = m.merge_eps;
    }
    if has("--similarity") || has("--dual-lambda") {
        let name = if has("--similarity") {
            s.similarity.as_str()
        } else {
            rs.similarity.name()
        };
        let lambda = s.dual_lambda.unwrap_or(match rs.similarity {
            Similarity::Dual(l) => l,
            _ => DEFAULT_DUAL_LAMBDA,
        });
        if s.dual_lambda.is_some() && name != "dual" {
            return Err(usage(format!(
                "--dual-lambda applies to --similarity dual only; the recipe's similarity is {name}"
            )));
        }
        let sim = Similarity::parse(name, lambda).map_err(merge_error)?;
        note(
            "--similarity",
            format!("{sim:?}"),
            format!("{:?}", rs.similarity),
        );
        rs.similarity = sim;
    }
    let c = &mut rs.corrections;
    if has("--repair") {
        note("--repair", "on".into(), onoff(c.repair));
        c.repair = true;
    }
    if has("--refit") || has("--refit-ridge") {
        let lstsq = if has("--refit") {
            s.refit == "lstsq"
        } else {
            c.refit_ridge.is_some()
        };
        if !lstsq && has("--refit-ridge") {
            return Err(usage(
                "--refit-ridge applies to --refit lstsq; the recipe has no refit".to_string(),
            ));
        }
        let ridge = if has("--refit-ridge") {
            Some(s.refit_ridge)
        } else {
            c.refit_ridge
        };
        let now = lstsq.then(|| ridge.unwrap_or(s.refit_ridge));
        note(
            "--refit",
            format!("{now:?}"),
            format!("{:?}", c.refit_ridge),
        );
        c.refit_ridge = now;
    }
    if has("--probe-images") {
        note(
            "--probe-images",
            format!("{:?}", s.probe_images.0),
            format!("{:?}", rs.probe_images),
        );
        rs.probe_images = s.probe_images.0;
    }
    if has("--no-probe-augment") {
        note("--no-probe-augment", "off".into(), onoff(rs.probe_augment));
        rs.probe_augment = false;
    }
    if has("--bn-reset-images") {
        note(
            "--bn-reset-images",
            format!("{:?}", s.bn_reset_images.0),
            format!("{:?}", rs.bn_reset_images),
        );
        rs.bn_reset_images = s.bn_reset_images.0;
    }
    if has("--no-endpoint-bn-reset") {
        note(
            "--no-endpoint-bn-reset",
            "off".into(),
            onoff(rs.endpoint_bn_reset),
        );
        rs.endpoint_bn_reset = false;
    }
    if has("--no-rebasin-bn-reset") {
        note(
            "--no-rebasin-bn-reset",
            "off".into(),
            onoff(rs.rebasin_bn_reset),
        );
        rs.rebasin_bn_reset = false;
    }
    if has("--batch-size") {
        note(
            "--batch-size",
            s.batch_size.to_string(),
            rs.batch_size.to_string(),
        );
        rs.batch_size = s.batch_size;
    }
    Ok(())
}
