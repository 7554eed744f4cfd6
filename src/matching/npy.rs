//! Reading a square matrix from a JSON array of arrays or a 2-D `.npy` file (float32/float64,
//! little endian, C order).

use std::path::Path;

use crate::matching::{MatchError, SquareMatrix};

/// Reads a square matrix.
///
/// # Errors
/// [`MatchError::Unsupported`] naming the file for unreadable, ragged or non-square input.
pub fn read_matrix(path: &Path) -> Result<SquareMatrix, MatchError> {
    let f = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| MatchError::Unsupported(format!("{f}: {e}")))?;
    let (rows, cols, data) = if bytes.starts_with(b"\x93NUMPY") {
        parse_npy(&bytes).map_err(|m| MatchError::Unsupported(format!("{f}: {m}")))?
    } else {
        let v: Vec<Vec<f64>> = serde_json::from_slice(&bytes).map_err(|e| {
            MatchError::Unsupported(format!(
                "{f}: expected a JSON array of arrays of numbers ({e})"
            ))
        })?;
        let r = v.len();
        let c = v.first().map_or(0, Vec::len);
        if let Some((i, row)) = v.iter().enumerate().find(|(_, row)| row.len() != c) {
            return Err(MatchError::Unsupported(format!(
                "{f}: row {i} has {} values, row 0 has {c}",
                row.len()
            )));
        }
        (r, c, v.into_iter().flatten().collect())
    };
    if rows != cols {
        return Err(MatchError::NotSquare { rows, cols });
    }
    SquareMatrix::new(rows, data)
}

fn parse_npy(b: &[u8]) -> Result<(usize, usize, Vec<f64>), String> {
    if b.len() < 10 {
        return Err("truncated .npy header".into());
    }
    let major = b[6];
    let (hlen, start) = if major == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10usize)
    } else {
        if b.len() < 12 {
            return Err("truncated .npy header".into());
        }
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header = std::str::from_utf8(
        b.get(start..start.saturating_add(hlen))
            .ok_or("truncated .npy header")?,
    )
    .map_err(|_| "bad header")?;
    let descr = if header.contains("'<f8'") {
        8
    } else if header.contains("'<f4'") {
        4
    } else {
        let descr = header
            .split("'descr':")
            .nth(1)
            .and_then(|d| d.split('\'').nth(1))
            .unwrap_or("?");
        return Err(format!(
            "unsupported .npy dtype `{}`: expected '<f4' or '<f8'",
            descr.escape_debug()
        ));
    };
    if header.contains("'fortran_order': True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_s = header.split("'shape':").nth(1).ok_or("no shape")?;
    let inner = shape_s
        .split('(')
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or("bad shape")?;
    let dims: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| "bad shape"))
        .collect::<Result<_, _>>()?;
    if dims.len() != 2 {
        return Err(format!("expected a 2-D array, found shape {dims:?}"));
    }
    let body = &b[start + hlen..];
    let n = dims[0]
        .checked_mul(dims[1])
        .filter(|n| n.checked_mul(descr).is_some())
        .ok_or_else(|| format!("shape {dims:?} is too large"))?;
    if body.len() < n * descr {
        return Err(format!(
            "truncated data: {} bytes for {n} values",
            body.len()
        ));
    }
    let data = if descr == 8 {
        body.chunks_exact(8)
            .take(n)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else {
        body.chunks_exact(4)
            .take(n)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    };
    Ok((dims[0], dims[1], data))
}
