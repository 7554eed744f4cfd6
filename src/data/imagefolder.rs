//! ImageFolder reader: `<root>/<class>/*.{jpg,jpeg,png}`, classes sorted by folder name give the
//! label ids (as torchvision's `ImageFolder`). Decoding runs in parallel (rayon); colour or
//! greyscale images are converted to RGB, then prepared as [`Preprocess`] says (CIFAR: must be
//! 32x32; ImageNet: resize 256 + centre crop).

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::preprocess::Preprocess;
use super::set::ImageSet;
use crate::error::DataError;

/// `(path, label)` of every image, and the class names sorted (label order).
pub type Listing = (Vec<(PathBuf, usize)>, Vec<String>);

/// Lists `(path, label)` of every image and the sorted class names.
///
/// # Errors
/// [`DataError::Io`] for a missing or unreadable folder, or one with no class folders / images.
pub fn list(root: &Path) -> Result<Listing, DataError> {
    let io = |p: &Path, e: std::io::Error| DataError::Io {
        path: p.display().to_string(),
        msg: e.to_string(),
    };
    let mut classes: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| io(root, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(DataError::Io {
            path: root.display().to_string(),
            msg: "no class folders: expected an ImageFolder tree <root>/<class>/*.jpg".into(),
        });
    }
    let mut items = Vec::new();
    for (label, c) in classes.iter().enumerate() {
        let dir = root.join(c);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| io(&dir, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    matches!(x.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                })
            })
            .collect();
        files.sort();
        items.extend(files.into_iter().map(|p| (p, label)));
    }
    if items.is_empty() {
        return Err(DataError::Io {
            path: root.display().to_string(),
            msg: "no .jpg/.png images found".into(),
        });
    }
    Ok((items, classes))
}

/// Decodes one image file to the stored `[side, side, 3]` u8 form of `prep`
/// ([`Preprocess::prepare`]; `train` selects the training storage).
///
/// # Errors
/// [`DataError::Image`] naming the file when it cannot be decoded or has the wrong size.
pub fn decode(path: &Path, prep: Preprocess, train: bool) -> Result<Vec<u8>, DataError> {
    let err = |msg: String| DataError::Image {
        path: path.display().to_string(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read ({e})")))?;
    prep.prepare(decode_bytes(&bytes).map_err(err)?, train)
        .map_err(err)
}

/// Decodes an encoded image to RGB, choosing the decoder from the bytes (as PIL does, whatever
/// the file is named): JPEG through libjpeg-turbo exactly as PIL/torchvision ([`super::jpeg`]),
/// PNG through the `image` crate (lossless, so every decoder agrees).
///
/// # Errors
/// A one-line message: unknown format, or the decoder's complaint.
pub fn decode_bytes(bytes: &[u8]) -> Result<image::RgbImage, String> {
    if super::jpeg::is_jpeg(bytes) {
        let (w, h, rgb) = super::jpeg::decode_rgb(bytes)
            .map_err(|e| format!("cannot decode JPEG ({})", crate::util::one_line(&e)))?;
        return image::RgbImage::from_raw(w as u32, h as u32, rgb)
            .ok_or_else(|| "JPEG decoder returned a short buffer".to_string());
    }
    let img = image::load_from_memory(bytes).map_err(|e| {
        format!(
            "cannot decode image: expected a JPEG or PNG file ({})",
            crate::util::one_line(&e.to_string())
        )
    })?;
    Ok(img.to_rgb8())
}

/// Loads and decodes a whole ImageFolder tree.
///
/// # Errors
/// As [`list`] and [`decode`].
pub fn load(root: &Path, prep: Preprocess, train: bool) -> Result<ImageSet, DataError> {
    load_at_most(root, prep, train, usize::MAX, None)
}

/// Like [`load`], but decodes only the images of `classes` (label ids; all when `None`) and at
/// most `max_images` of them: when there are more, a seeded random subset of that size (seed 0,
/// kept in listing order) is decoded, so that very large folders (ImageNet: 1.28M training
/// images) never have to fit the in-memory pixel cache.
///
/// # Errors
/// As [`list`] and [`decode`].
pub fn load_at_most(
    root: &Path,
    prep: Preprocess,
    train: bool,
    max_images: usize,
    classes: Option<&[usize]>,
) -> Result<ImageSet, DataError> {
    let (items, class_names) = listing_at_most(root, max_images, classes)?;
    decode_items(root, &items, class_names, prep, train)
}

/// The listing [`load_at_most`] decodes: `(path, label)` of the kept images, and the class
/// names.
///
/// # Errors
/// As [`list`].
pub fn listing_at_most(
    root: &Path,
    max_images: usize,
    classes: Option<&[usize]>,
) -> Result<Listing, DataError> {
    let (mut items, class_names) = list(root)?;
    if let Some(c) = classes {
        items.retain(|(_, l)| c.contains(l));
    }
    if items.len() > max_images {
        use rand::seq::index::sample;
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut keep = sample(&mut rng, items.len(), max_images.max(1)).into_vec();
        keep.sort_unstable();
        items = keep.into_iter().map(|i| items[i].clone()).collect();
    }
    Ok((items, class_names))
}

/// Decodes listed images (in parallel) into an [`ImageSet`].
///
/// # Errors
/// As [`decode`].
pub fn decode_items(
    root: &Path,
    items: &[(PathBuf, usize)],
    class_names: Vec<String>,
    prep: Preprocess,
    train: bool,
) -> Result<ImageSet, DataError> {
    let decoded: Result<Vec<Vec<u8>>, DataError> = items
        .par_iter()
        .map(|(p, _)| decode(p, prep, train))
        .collect();
    let decoded = decoded?;
    let side = prep.stored_side(train);
    let mut pixels = Vec::with_capacity(items.len() * side * side * 3);
    for d in &decoded {
        pixels.extend_from_slice(d);
    }
    Ok(ImageSet {
        pixels,
        side,
        prep,
        labels: items.iter().map(|(_, l)| *l).collect(),
        class_names,
        source: root.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_sorted_folder_names() {
        let root = tempfile::tempdir().unwrap();
        let img = image::RgbImage::from_pixel(32, 32, image::Rgb([10, 20, 30]));
        for (class, file) in [
            ("zebra", "b.png"),
            ("ant", "a.png"),
            ("mole", "c.png"),
            ("ant", "0.png"),
        ] {
            std::fs::create_dir_all(root.path().join(class)).unwrap();
            img.save(root.path().join(class).join(file)).unwrap();
        }
        let set = load(root.path(), Preprocess::CIFAR, false).unwrap();
        assert_eq!(set.class_names, ["ant", "mole", "zebra"]);
        assert_eq!(set.labels, [0, 0, 1, 2]); // ant/0.png, ant/a.png, mole, zebra
        assert_eq!(&set.image(0)[..3], &[10, 20, 30]);
        // a capped load decodes a seeded subset, in listing order
        let two = load_at_most(root.path(), Preprocess::CIFAR, false, 2, None).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(
            two.labels,
            load_at_most(root.path(), Preprocess::CIFAR, false, 2, None)
                .unwrap()
                .labels
        );
        assert!(two.labels.windows(2).all(|w| w[0] <= w[1]));
        // class filter at listing time: only `mole` (label 1) is decoded, labels keep their ids
        let mole = load_at_most(root.path(), Preprocess::CIFAR, false, 9, Some(&[1])).unwrap();
        assert_eq!(mole.labels, [1]);
        assert_eq!(mole.class_names.len(), 3);
        // a wrong-size image is refused with its path
        image::RgbImage::new(8, 8)
            .save(root.path().join("mole").join("small.png"))
            .unwrap();
        assert!(load(root.path(), Preprocess::CIFAR, false)
            .unwrap_err()
            .to_string()
            .contains("small.png"));
    }

    /// The JPEG fixtures' pixels were decoded by PIL 13 (libjpeg-turbo) with
    /// `Image.open(f).convert("RGB")`: baseline 4:2:0, greyscale, 4:4:4, 4:2:2, odd size and
    /// progressive streams must all decode to the same bytes.
    #[test]
    fn jpeg_pixels_equal_pil() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg");
        for i in 0..8 {
            let jpg = std::fs::read(dir.join(format!("{i}.jpg"))).unwrap();
            let want = std::fs::read(dir.join(format!("{i}.rgb"))).unwrap();
            let got = decode_bytes(&jpg).unwrap();
            assert_eq!(got.as_raw().len(), want.len(), "fixture {i}");
            let diff = got
                .as_raw()
                .iter()
                .zip(&want)
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diff, 0, "fixture {i}: {diff} bytes differ from PIL");
        }
    }

    #[test]
    fn decoder_follows_content_not_name() {
        let root = tempfile::tempdir().unwrap();
        let png = root.path().join("really-a-png.jpg");
        image::RgbImage::from_pixel(32, 32, image::Rgb([1, 2, 3]))
            .save_with_format(&png, image::ImageFormat::Png)
            .unwrap();
        let px = decode(&png, Preprocess::CIFAR, false).unwrap();
        assert_eq!(&px[..3], &[1, 2, 3]);
        let junk = root.path().join("junk.png");
        std::fs::write(&junk, b"not an image\nsecond line").unwrap();
        let e = decode(&junk, Preprocess::CIFAR, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("junk.png") && !e.contains('\n'), "{e}");
    }
}
