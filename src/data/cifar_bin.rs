//! Reader for the standard CIFAR binary format: CIFAR-10 records are `<1 byte label><3072 bytes
//! CHW pixels>` (`data_batch_1..5.bin`, `test_batch.bin`); CIFAR-100 records are `<coarse><fine>
//! <3072 bytes>` (`train.bin`, `test.bin`; the fine label is used).

use std::path::Path;

use super::preprocess::Preprocess;
use super::set::{ImageSet, IMAGE_BYTES, SIDE};
use crate::error::DataError;

const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// True when `dir` holds CIFAR-10 or CIFAR-100 binary files.
pub fn is_cifar_bin_dir(dir: &Path) -> bool {
    [
        "data_batch_1.bin",
        "test_batch.bin",
        "train.bin",
        "test.bin",
    ]
    .iter()
    .any(|f| dir.join(f).is_file())
}

/// Parses the records of one binary file. `label_bytes` is 1 (CIFAR-10) or 2 (CIFAR-100).
///
/// # Errors
/// [`DataError::Image`] when the size is not a whole number of records.
pub fn parse(
    bytes: &[u8],
    label_bytes: usize,
    name: &str,
) -> Result<(Vec<u8>, Vec<usize>), DataError> {
    let rec = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(DataError::Image {
            path: name.to_string(),
            msg: format!(
                "{} bytes is not a whole number of {rec}-byte CIFAR records",
                bytes.len()
            ),
        });
    }
    let n = bytes.len() / rec;
    let mut pixels = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for r in bytes.chunks_exact(rec) {
        labels.push(r[label_bytes - 1] as usize);
        let chw = &r[label_bytes..];
        for p in 0..SIDE * SIDE {
            for c in 0..3 {
                pixels.push(chw[c * SIDE * SIDE + p]);
            }
        }
    }
    Ok((pixels, labels))
}

/// Loads the `split` ("train" or "test") files of a CIFAR binary folder.
///
/// # Errors
/// [`DataError`] naming the file when it is missing or malformed.
///
/// With [`Preprocess::IMAGENET`] every 32x32 image is upsampled as any other image would be
/// (resize 256, centre crop), for ResNet-50 on CIFAR.
pub fn load_dir(dir: &Path, split: &str, prep: Preprocess) -> Result<ImageSet, DataError> {
    let (files, label_bytes): (Vec<String>, usize) =
        if dir.join("test_batch.bin").is_file() || dir.join("data_batch_1.bin").is_file() {
            if split == "test" {
                (vec!["test_batch.bin".into()], 1)
            } else {
                ((1..=5).map(|i| format!("data_batch_{i}.bin")).collect(), 1)
            }
        } else {
            (vec![format!("{split}.bin")], 2)
        };
    let mut set = ImageSet {
        pixels: vec![],
        side: SIDE,
        prep: Preprocess::CIFAR,
        labels: vec![],
        class_names: vec![],
        source: dir.display().to_string(),
    };
    for f in files {
        let p = dir.join(&f);
        let bytes = std::fs::read(&p).map_err(|e| DataError::Io {
            path: p.display().to_string(),
            msg: e.to_string(),
        })?;
        let (px, lb) = parse(&bytes, label_bytes, &p.display().to_string())?;
        set.pixels.extend(px);
        set.labels.extend(lb);
    }
    let n_classes = set.labels.iter().max().map_or(0, |m| m + 1);
    set.class_names = if label_bytes == 1 {
        CIFAR10_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..n_classes.max(100))
            .map(|i| format!("class{i:02}"))
            .collect()
    };
    if prep != Preprocess::CIFAR {
        let train = split == "train";
        let side = prep.stored_side(train);
        let mut pixels = Vec::with_capacity(set.len() * side * side * 3);
        for i in 0..set.len() {
            let img = image::RgbImage::from_raw(SIDE as u32, SIDE as u32, set.image(i).to_vec())
                .expect("32x32x3 bytes");
            pixels.extend(prep.prepare(img, train).map_err(|msg| DataError::Image {
                path: dir.display().to_string(),
                msg,
            })?);
        }
        set.pixels = pixels;
        set.side = side;
        set.prep = prep;
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_a_generated_file() {
        // two CIFAR-10 records: label 3 with pixel value = channel index, label 9 all 200
        let mut bytes = vec![3u8];
        for c in 0..3u8 {
            bytes.extend(std::iter::repeat_n(c, SIDE * SIDE));
        }
        bytes.push(9);
        bytes.extend(std::iter::repeat_n(200u8, IMAGE_BYTES));
        let (px, lb) = parse(&bytes, 1, "x.bin").unwrap();
        assert_eq!(lb, vec![3, 9]);
        assert_eq!(&px[..6], &[0, 1, 2, 0, 1, 2]); // HWC after conversion from CHW
        assert!(px[IMAGE_BYTES..].iter().all(|&v| v == 200));
        assert!(parse(&bytes[..100], 1, "x.bin")
            .unwrap_err()
            .to_string()
            .contains("x.bin"));
    }
}
