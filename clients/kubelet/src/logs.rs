//! Container log files: reading the tail, following new lines, and
//! rotation (copy, then truncate: processes keep writing to the same file,
//! opened for appending, so nothing has to be reopened).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::runtime::{LogStream, RuntimeError};

/// Offset where the last `lines` lines of `data` start.
fn tail_offset(data: &[u8], lines: usize) -> usize {
    if lines == 0 {
        return data.len();
    }
    let mut seen = 0;
    let end = if data.ends_with(b"\n") {
        data.len() - 1
    } else {
        data.len()
    };
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

/// Streams a log file: its tail, then (with `follow`) what is appended,
/// surviving rotation by truncation.
pub async fn read_file(
    path: PathBuf,
    tail: Option<usize>,
    follow: bool,
) -> Result<LogStream, RuntimeError> {
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => {
            // Not written yet: follow from the beginning once it is.
            wait_for(&path).await?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Box::pin(futures::stream::empty()));
        }
        Err(e) => return Err(RuntimeError::Failure(e.to_string())),
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .await
        .map_err(|e| RuntimeError::Failure(e.to_string()))?;
    let start = tail.map(|n| tail_offset(&data, n)).unwrap_or(0);
    let first = Bytes::copy_from_slice(&data[start..]);
    let mut pos = data.len() as u64;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, RuntimeError>>(16);
    tokio::spawn(async move {
        if !first.is_empty() && tx.send(Ok(first)).await.is_err() {
            return;
        }
        if !follow {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let len = match tokio::fs::metadata(&path).await {
                Ok(m) => m.len(),
                Err(_) => continue,
            };
            if len < pos {
                // Rotated (truncated): start over at the beginning.
                pos = 0;
            }
            if len == pos {
                continue;
            }
            if file.seek(SeekFrom::Start(pos)).await.is_err() {
                continue;
            }
            while let Ok(n) = file.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                pos += n as u64;
                if tx
                    .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

async fn wait_for(path: &Path) -> Result<tokio::fs::File, RuntimeError> {
    loop {
        match tokio::fs::File::open(path).await {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(RuntimeError::Failure(e.to_string())),
        }
    }
}

/// Rotates `path` when it exceeds `max_bytes`: its content moves to
/// `path.1` (replacing an older one) and the file is emptied in place.
pub fn rotate_if_needed(path: &Path, max_bytes: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use futures::StreamExt;

    use super::*;

    #[test]
    fn tails_start_at_the_right_line() {
        assert_eq!(tail_offset(b"a\nb\nc\n", 2), 2);
        assert_eq!(tail_offset(b"a\nb\nc", 1), 4);
        assert_eq!(tail_offset(b"a\nb\n", 5), 0);
        assert_eq!(tail_offset(b"a\nb\n", 0), 4);
    }

    #[tokio::test]
    async fn following_sees_appends_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "one\ntwo\nthree").unwrap();
        let all: Vec<_> = read_file(path.clone(), Some(2), false)
            .await
            .unwrap()
            .collect()
            .await;
        assert_eq!(
            all.into_iter()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
                .concat(),
            b"two\nthree\n"
        );
        let mut s = read_file(path.clone(), Some(0), true).await.unwrap();
        writeln!(f, "four").unwrap();
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b"four\n")
        );
        assert!(rotate_if_needed(&path, 4).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c.log.1")).unwrap(),
            "one\ntwo\nthree\nfour\n"
        );
        writeln!(f, "five").unwrap();
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            Bytes::from_static(b"five\n")
        );
    }
}
