//! Teacher outputs kept per image (issue 27: "cached once per image when augmentation is
//! off"): without augmentation a stored image gives its teacher the same input every epoch, so
//! each teacher runs once per image over the whole distillation instead of once per draw.
//! Memory: images x teachers x output width x 4 bytes (ResNet-20 text heads, all 25,000 images
//! of both tasks, both teachers on every image: 50,000 x 2 x 384 x 4 B = 154 MB).

use std::collections::HashMap;

/// Per teacher, its output row (`dim` values) for each image position already computed.
#[derive(Default)]
pub struct TeacherCache {
    rows: Vec<HashMap<usize, Vec<f32>>>,
    dims: Vec<usize>,
}

impl TeacherCache {
    /// An empty cache for `teachers` teachers.
    pub fn new(teachers: usize) -> Self {
        Self {
            rows: (0..teachers).map(|_| HashMap::new()).collect(),
            dims: vec![0; teachers],
        }
    }

    /// Teacher `t`'s outputs `[ids.len(), dim]` (row-major) and `dim` for the images at set
    /// positions `ids` (stored bytes `images`, same order): the rows not seen before computed by
    /// one call of `compute` on those images only, the others from the cache. Returns with the
    /// outputs the number of images `compute` ran on.
    pub fn outputs(
        &mut self,
        t: usize,
        ids: &[usize],
        images: &[&[u8]],
        compute: impl FnOnce(&[&[u8]]) -> (Vec<f32>, usize),
    ) -> (Vec<f32>, usize, usize) {
        let rows = &mut self.rows[t];
        let mut missing: Vec<usize> = Vec::new();
        for (k, id) in ids.iter().enumerate() {
            if !rows.contains_key(id) && !missing.iter().any(|&m| ids[m] == *id) {
                missing.push(k);
            }
        }
        if !missing.is_empty() {
            let refs: Vec<&[u8]> = missing.iter().map(|&k| images[k]).collect();
            let (data, dim) = compute(&refs);
            self.dims[t] = dim;
            for (&k, row) in missing.iter().zip(data.chunks(dim.max(1))) {
                rows.insert(ids[k], row.to_vec());
            }
        }
        let dim = self.dims[t];
        let mut out = Vec::with_capacity(ids.len() * dim);
        for id in ids {
            out.extend_from_slice(&rows[id]);
        }
        (out, dim, missing.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_image_is_computed_once_and_rows_come_back_in_order() {
        // a "teacher" whose output row is (first byte, 2 x first byte)
        let f = |imgs: &[&[u8]]| -> (Vec<f32>, usize) {
            (
                imgs.iter()
                    .flat_map(|i| [i[0] as f32, 2.0 * i[0] as f32])
                    .collect(),
                2,
            )
        };
        let imgs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![10 + i]).collect();
        let refs: Vec<&[u8]> = imgs.iter().map(Vec::as_slice).collect();
        let mut c = TeacherCache::new(2);
        // positions 3, 1, 3 (a repeat within the batch): two computed
        let (o, d, n) = c.outputs(0, &[3, 1, 3], &[refs[3], refs[1], refs[3]], f);
        assert_eq!((d, n), (2, 2));
        assert_eq!(o, vec![13.0, 26.0, 11.0, 22.0, 13.0, 26.0]);
        // 1 again and 5 new: only 5 computed; the other teacher has its own rows
        let (o, _, n) = c.outputs(0, &[1, 5], &[refs[1], refs[5]], f);
        assert_eq!(n, 1);
        assert_eq!(o, vec![11.0, 22.0, 15.0, 30.0]);
        assert_eq!(c.outputs(1, &[1], &[refs[1]], f).2, 1);
        // nothing new: nothing computed
        assert_eq!(
            c.outputs(0, &[5, 3, 1], &[refs[5], refs[3], refs[1]], f).2,
            0
        );
    }
}
