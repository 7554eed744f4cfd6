//! `zipmerge inspect`: what a model folder holds.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use zipmerge::checkpoint;
use zipmerge::models::param_count;
use zipmerge::spec::MergeSpec;

/// Arguments of `zipmerge inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

/// Runs `zipmerge inspect`.
pub fn exec(a: InspectArgs) -> Result<()> {
    let dir = checkpoint::model_dir(&a.model);
    let m = checkpoint::read_manifest(&dir)?;
    let cfg = m.net_config();
    let spec = MergeSpec::of(&cfg);
    let sys = zipmerge::models::system::System::load(&dir, &burn::tensor::Device::flex())?;
    let info = json!({
        "arch": m.arch, "width": m.width, "head": m.heads[0].head.kind(),
        "heads": m.heads.iter().map(|h| json!({"classes": h.classes, "kind": h.head.kind()})).collect::<Vec<_>>(),
        "stop": m.stop, "multi_head": m.is_multi_head(),
        "params_per_network": param_count(&cfg),
        "flops": sys.flops(),
        "spaces": spec.spaces,
        "stops": spec.stops(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!(
        "{}: {} {}, {} head(s) ({}), {}",
        dir.display(),
        m.arch,
        match m.arch {
            zipmerge::models::Arch::Resnet50 => format!("base width {}", m.width),
            _ => format!("x{}", m.width),
        },
        m.heads.len(),
        m.heads[0].head.kind(),
        m.stop
            .as_deref()
            .map_or("single model".to_string(), |s| format!("zipped at {s}"))
    );
    for h in &m.heads {
        println!(
            "  head classes {} ({} classes)",
            class_ranges(&h.classes),
            h.classes.len()
        );
    }
    println!("  parameters (one network): {}", param_count(&cfg));
    println!(
        "  forward MACs/image (whole system, {0}x{0} input, {1:?} preprocessing): {2}",
        cfg.input_side(),
        cfg.preprocess(),
        sys.flops()
    );
    println!("  feature spaces:");
    for (i, s) in spec.spaces.iter().enumerate() {
        println!(
            "    {i:>2} {:<16} width {:>4}  {:?}{}",
            s.name,
            s.width,
            s.kind,
            if s.stop_cut.is_some() { "  (stop)" } else { "" }
        );
    }
    let stops: Vec<String> = spec
        .stops()
        .iter()
        .map(|s| {
            if s.aliases.is_empty() {
                s.name.clone()
            } else {
                format!("{} ({})", s.name, s.aliases.join(", "))
            }
        })
        .collect();
    println!("  valid stops: {}", stops.join(", "));
    Ok(())
}

/// `0,1,2,3,7,9,10` -> `0-3,7,9,10` (runs of three or more become ranges).
fn class_ranges(c: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let mut j = i;
        while j + 1 < c.len() && c[j + 1] == c[j] + 1 {
            j += 1;
        }
        parts.push(if j > i + 1 {
            format!("{}-{}", c[i], c[j])
        } else if j == i + 1 {
            format!("{},{}", c[i], c[j])
        } else {
            c[i].to_string()
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn class_ranges_compress_runs() {
        assert_eq!(super::class_ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9,10");
        assert_eq!(super::class_ranges(&[0, 5, 6, 7, 9]), "0,5-7,9");
    }
}
