//! A static check of PyTorch pickles before their tensors are read: every global the pickle
//! references must be one of the few that a plain `state_dict` needs (tensor rebuild functions,
//! typed storages, `OrderedDict`). Anything else (`os.system`, a model class, `builtins.eval`, ...)
//! means loading it in PyTorch would run code, and the file is refused.
//!
//! Nothing is executed: the pickle is walked opcode by opcode (protocols 0-5), recording the
//! arguments of `GLOBAL` / `INST` and the two strings consumed by `STACK_GLOBAL`.

use std::io::Read;
use std::path::Path;

use crate::error::CheckpointError;

/// `module.name` globals a state_dict pickle may reference.
fn allowed(global: &str) -> bool {
    const EXACT: &[&str] = &[
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.storage.UntypedStorage",
        "torch.serialization._get_layout",
        "torch.device",
        "torch.Size",
        "builtins.set",
        "builtins.frozenset",
        "builtins.slice",
        "builtins.complex",
        "_codecs.encode",
    ];
    EXACT.contains(&global)
        || (global.starts_with("torch.")
            && global.ends_with("Storage")
            && !global[6..].contains('.'))
        || global
            .strip_prefix("torch.")
            .is_some_and(|d| TORCH_DTYPES.contains(&d))
}

/// `torch.<dtype>` objects a state_dict pickle may name (tensor dtypes, PyTorch 2.x).
const TORCH_DTYPES: &[&str] = &[
    "float32",
    "float",
    "float16",
    "half",
    "bfloat16",
    "float64",
    "double",
    "complex32",
    "complex64",
    "complex128",
    "cfloat",
    "cdouble",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "short",
    "int32",
    "int",
    "int64",
    "long",
    "bool",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "qint8",
    "quint8",
    "qint32",
];

/// Globals referenced by one pickle stream starting at `data[0]`; returns them and the offset
/// just after its STOP opcode.
///
/// `STACK_GLOBAL` takes its module and name from the top two stack items. Only those two need to
/// be known, so the walk keeps a *window*: the values of the topmost stack items that are known
/// exactly (strings pushed by the string opcodes, or fetched from memo slots known to hold a
/// string; `None` = an item of unknown value). Opcodes that only push a string, fetch from the
/// memo, duplicate the top or store it in the memo update the window; every other opcode clears
/// it. A `STACK_GLOBAL` whose two operands are not both known strings is reported as an unknown
/// global (refused). Pickles written by `torch.save` always push (or memo-fetch) the two strings
/// right before `STACK_GLOBAL`, so they pass.
fn scan(data: &[u8]) -> Result<(Vec<String>, usize), String> {
    let mut globals = Vec::new();
    let mut window: Vec<Option<String>> = Vec::new();
    let mut memo: std::collections::HashMap<usize, Option<String>> = Default::default();
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = data
            .get(*i..i.saturating_add(n))
            .ok_or_else(|| "pickle ends early".to_string())?;
        *i += n;
        Ok(s)
    };
    let line = |i: &mut usize| -> Result<String, String> {
        let rest = data.get(*i..).ok_or("pickle ends early")?;
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("pickle ends early")?;
        *i += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let le = |b: &[u8]| b.iter().rev().fold(0usize, |a, &x| (a << 8) | x as usize);
    let text = |b: &[u8]| Some(String::from_utf8_lossy(b).into_owned());
    loop {
        let op = *take(&mut i, 1)?.first().ok_or("empty")?;
        // Some(value): the opcode pushes exactly one item of that (possibly unknown) value and
        // does nothing else; None: any other effect (the window is cleared).
        let mut push: Option<Option<String>> = None;
        match op {
            b'.' => return Ok((globals, i)), // STOP
            // memo stores: the stack is unchanged, the slot takes the top's value
            0x94 => {
                let v = window.last().cloned().flatten();
                memo.insert(memo.len(), v);
                continue;
            }
            b'p' => {
                let idx: usize = line(&mut i)?.trim().parse().map_err(|_| "bad PUT")?;
                memo.insert(idx, window.last().cloned().flatten());
                continue;
            }
            b'q' => {
                let idx = le(take(&mut i, 1)?);
                memo.insert(idx, window.last().cloned().flatten());
                continue;
            }
            b'r' => {
                let idx = le(take(&mut i, 4)?);
                memo.insert(idx, window.last().cloned().flatten());
                continue;
            }
            // memo fetches push the slot's value
            b'g' => {
                let idx: usize = line(&mut i)?.trim().parse().map_err(|_| "bad GET")?;
                push = Some(memo.get(&idx).cloned().flatten());
            }
            b'h' => push = Some(memo.get(&le(take(&mut i, 1)?)).cloned().flatten()),
            b'j' => push = Some(memo.get(&le(take(&mut i, 4)?)).cloned().flatten()),
            b'2' => push = Some(window.last().cloned().flatten()), // DUP
            // strings (text: usable as STACK_GLOBAL operands)
            // protocol-0 strings are escape-decoded by Python: a string with a backslash (or
            // without its one pair of quotes) is treated as unknown rather than decoded here
            b'V' => {
                let s = line(&mut i)?;
                push = Some((!s.contains('\\')).then_some(s));
            }
            b'S' => {
                let s = line(&mut i)?;
                let unquoted = ['\'', '"'].iter().find_map(|q| {
                    s.strip_prefix(*q)
                        .and_then(|r| r.strip_suffix(*q))
                        .filter(|r| !r.contains('\\'))
                });
                push = Some(unquoted.map(str::to_string));
            }
            b'U' | 0x8c => {
                let n = le(take(&mut i, 1)?);
                push = Some(text(take(&mut i, n)?));
            }
            b'T' | b'X' => {
                let n = le(take(&mut i, 4)?);
                push = Some(text(take(&mut i, n)?));
            }
            0x8d => {
                let n = le(take(&mut i, 8)?);
                push = Some(text(take(&mut i, n)?));
            }
            0x93 => {
                // STACK_GLOBAL: module and name are the top two items
                let n = window.len();
                let g = match (n >= 2).then(|| (&window[n - 2], &window[n - 1])) {
                    Some((Some(m), Some(name))) => format!("{m}.{name}"),
                    _ => "<STACK_GLOBAL of operands not pushed as strings>".to_string(),
                };
                globals.push(g);
            }
            b'c' | b'i' => {
                // GLOBAL / INST
                let m = line(&mut i)?;
                let n = line(&mut i)?;
                globals.push(format!("{m}.{n}"));
            }
            b'o' | 0x81 | 0x92 => {} // OBJ / NEWOBJ / NEWOBJ_EX: the class is a checked global
            // other opcodes without an argument
            b'(' | b')' | b'0' | b'1' | b'N' | b'R' | b'a' | b'b' | b'd' | b'e' | b'l' | b's'
            | b't' | b'u' | b'}' | b']' | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | 0x8f | 0x90 | 0x91
            | 0x97 | 0x98 | b'Q' => {}
            b'I' | b'L' | b'F' | b'P' => {
                line(&mut i)?;
            }
            0x80 | b'K' => {
                take(&mut i, 1)?;
            }
            b'M' => {
                take(&mut i, 2)?;
            }
            b'J' => {
                take(&mut i, 4)?;
            }
            0x82..=0x84 => {
                // EXT1/2/4: a global looked up in copyreg's extension registry
                take(&mut i, [1, 2, 4][(op - 0x82) as usize])?;
                globals.push("<copyreg extension>".into());
            }
            b'G' | 0x95 => {
                take(&mut i, 8)?;
            }
            0x8a | b'C' => {
                let n = le(take(&mut i, 1)?);
                take(&mut i, n)?;
            }
            0x8b | b'B' => {
                let n = le(take(&mut i, 4)?);
                take(&mut i, n)?;
            }
            0x8e | 0x96 => {
                let n = le(take(&mut i, 8)?);
                take(&mut i, n)?;
            }
            other => {
                return Err(format!(
                    "unknown pickle opcode 0x{other:02x} at byte {}",
                    i - 1
                ))
            }
        }
        match push {
            Some(v) => window.push(v),
            None => window.clear(),
        }
    }
}

/// Checks the pickle(s) of a PyTorch checkpoint (zip archive: `*/data.pkl`; legacy format: the
/// leading pickles) reference only state-dict globals.
///
/// # Errors
/// [`CheckpointError::Format`] naming the file and the first disallowed global, or describing
/// why the pickle could not be walked.
pub fn check_pytorch_file(path: &Path) -> Result<(), CheckpointError> {
    let file = path.display().to_string();
    let fail = |msg: String| CheckpointError::Format {
        file: file.clone(),
        msg,
    };
    let bytes = std::fs::read(path).map_err(|e| CheckpointError::Io {
        file: file.clone(),
        msg: e.to_string(),
    })?;
    let mut pickles: Vec<Vec<u8>> = Vec::new();
    if bytes.starts_with(b"PK") {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&bytes))
            .map_err(|e| fail(format!("truncated or corrupt PyTorch zip archive ({e})")))?;
        // PyTorch (miniz) looks records up by their stored name, ignoring case; the zip crate
        // keeps one entry per name (and may prefer a Unicode-path field). Refuse archives whose
        // central directory has more records than distinct names, or names equal up to case,
        // and scan every stored name ending in .pkl in any case.
        let raw = central_directory_names(&bytes)
            .ok_or_else(|| fail("zip central directory is unreadable".into()))?;
        if raw.len() != z.len() {
            return Err(fail(
                "zip archive has repeated entry names: refused (PyTorch and this check could \
                 read different records)"
                    .into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (k, raw_name) in raw.iter().enumerate() {
            let name = String::from_utf8_lossy(raw_name).to_lowercase();
            if !seen.insert(name.clone()) {
                return Err(fail(format!(
                    "zip archive has two entries named `{name}` (ignoring case): refused"
                )));
            }
            let mut entry = z
                .by_index(k)
                .map_err(|e| fail(format!("zip entry {k} is unreadable ({e})")))?;
            let shown = entry.name().map(|n| n.to_lowercase()).unwrap_or_default();
            if name.ends_with(".pkl") || shown.ends_with(".pkl") {
                let mut v = Vec::new();
                entry
                    .read_to_end(&mut v)
                    .map_err(|e| fail(format!("zip entry {name} is unreadable ({e})")))?;
                pickles.push(v);
            }
        }
        if pickles.is_empty() {
            return Err(fail(
                "zip archive holds no data.pkl: not a PyTorch checkpoint".into(),
            ));
        }
        for p in &pickles {
            check_globals(p, 1, &file)?;
        }
        Ok(())
    } else if is_tar(&bytes) {
        Err(fail(
            "tar-format PyTorch file (torch < 0.4): not supported (re-save it with a current \
             torch.save)"
                .into(),
        ))
    } else if bytes.first() == Some(&0x80) {
        // legacy torch.save: magic number, protocol, sys info, the object, the storage keys
        // (then raw storage bytes)
        check_globals(&bytes, 5, &file)
    } else {
        Err(fail(
            "not a PyTorch checkpoint: expected a zip archive (torch >= 1.6) or a legacy \
             pickle (torch.save(..., _use_new_zipfile_serialization=False))"
                .into(),
        ))
    }
}

/// The stored names of every record of a zip central directory, in order (zip64 aware), read
/// from the raw bytes: no Unicode-path extra field is applied (PyTorch's miniz ignores them).
/// `None` if the directory cannot be found or parsed.
fn central_directory_names(b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let u16le = |i: usize| -> Option<usize> {
        Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?) as usize)
    };
    let u32le = |i: usize| -> Option<u64> {
        Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?) as u64)
    };
    let u64le =
        |i: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?)) };
    let from = b.len().saturating_sub(65_557);
    let eocd = (from..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b[i..i + 4] == *b"PK\x05\x06")?;
    let (mut n, mut off) = (u16le(eocd + 10)? as u64, u32le(eocd + 16)?);
    if n == 0xFFFF || off == 0xFFFF_FFFF {
        // zip64: the locator just before the EOCD gives the zip64 EOCD record's offset
        let loc = eocd.checked_sub(20)?;
        if b.get(loc..loc + 4)? != b"PK\x06\x07" {
            return None;
        }
        let z = u64le(loc + 8)? as usize;
        if b.get(z..z + 4)? != b"PK\x06\x06" {
            return None;
        }
        n = u64le(z + 32)?;
        off = u64le(z + 48)?;
    }
    let mut names = Vec::new();
    let mut p = off as usize;
    for _ in 0..n {
        if b.get(p..p + 4)? != b"PK\x01\x02" {
            return None;
        }
        let (nl, el, cl) = (u16le(p + 28)?, u16le(p + 30)?, u16le(p + 32)?);
        names.push(b.get(p + 46..p + 46 + nl)?.to_vec());
        p += 46 + nl + el + cl;
    }
    Some(names)
}

/// True when the first 512 bytes are a tar header with a valid checksum (what Python's
/// `tarfile` accepts, and what `torch.load` tries first for non-zip files).
fn is_tar(b: &[u8]) -> bool {
    let Some(h) = b.get(..512) else {
        return false;
    };
    let field = String::from_utf8_lossy(&h[148..156]);
    let Ok(stored) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8)
    else {
        return false;
    };
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if (148..156).contains(&i) {
                32
            } else {
                x as u32
            }
        })
        .sum();
    stored == sum
}

fn check_globals(data: &[u8], streams: usize, file: &str) -> Result<(), CheckpointError> {
    let mut off = 0;
    for _ in 0..streams {
        let (globals, used) = scan(&data[off..]).map_err(|m| CheckpointError::Format {
            file: file.to_string(),
            msg: format!("not a readable pickle ({m})"),
        })?;
        if let Some(g) = globals.iter().find(|g| !allowed(g)) {
            return Err(CheckpointError::Format {
                file: file.to_string(),
                msg: format!(
                    "the pickle references `{g}`, which loading would execute; only tensors and \
                     plain containers are accepted (refused, nothing was run; re-save just the \
                     weights: torch.save(ckpt[\"state_dict\"], ...) or safetensors)"
                ),
            });
        }
        off += used;
        if off >= data.len() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globals_of_hand_written_pickles() {
        // protocol 2: GLOBAL collections OrderedDict, EMPTY_TUPLE, REDUCE, STOP
        let ok = b"\x80\x02ccollections\nOrderedDict\nq\x00)R.";
        assert_eq!(scan(ok).unwrap().0, ["collections.OrderedDict"]);
        // protocol 4: SHORT_BINUNICODE "posix", SHORT_BINUNICODE "system", STACK_GLOBAL
        let bad = b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x02id\x85R.";
        let g = scan(bad).unwrap().0;
        assert_eq!(g, ["posix.system"]);
        assert!(!allowed(&g[0]));
        assert!(allowed("torch.FloatStorage") && allowed("torch.BFloat16Storage"));
        assert!(!allowed("torch.nn.modules.conv.Conv2d"));
        assert!(scan(b"\x80\x02ccollections\n").is_err());
        // protocol 4 re-uses a memoised module string: MEMOIZE slot 0 = "torch", BINGET 0
        let p4 = b"\x80\x04\x8c\x05torch\x94\x8c\x0cFloatStorage\x94\x93\x94h\x00\x8c\x0bLongStorage\x94\x93.";
        assert_eq!(
            scan(p4).unwrap().0,
            ["torch.FloatStorage", "torch.LongStorage"]
        );
        // strings parked in the memo, popped, then fetched back: the real operands are found
        let hidden =
            b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94000\x8c\x01a\x8c\x01bh\x00h\x01\x93.";
        assert_eq!(scan(hidden).unwrap().0, ["posix.system"]);
        // an operand of unknown value (an integer here) is refused as unknown
        let unknown = b"\x80\x04\x8c\x05posixK\x01\x93.";
        assert!(!allowed(&scan(unknown).unwrap().0[0]));
    }
}
