//! The container log: what the main process wrote, with the stream and the
//! time of each chunk, so `logs` can split stdout from stderr again.
//!
//! Record format (binary-safe, appended, never rewritten):
//! `<stream> <unix nanoseconds> <length>\n<length bytes>\n`, where stream
//! is `stdout` or `stderr`. A record cut short at the end of the file (the
//! writer is mid-record) is left for the next read.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One chunk of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub stream: Stream,
    pub time_ns: u128,
    pub data: Vec<u8>,
}

/// The writing side, shared by the relay threads.
pub struct LogWriter {
    file: Mutex<File>,
}

impl LogWriter {
    /// Opens (creates, appends to) the log at `path`.
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(LogWriter {
            file: Mutex::new(file),
        })
    }

    /// Appends one record (a failed write is dropped: the log never stops
    /// the container).
    pub fn record(&self, stream: Stream, data: &[u8]) {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut bytes = format!("{} {time} {}\n", stream.name(), data.len()).into_bytes();
        bytes.extend_from_slice(data);
        bytes.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.write_all(&bytes);
    }
}

/// Parses whole records from `buf`; returns them and the bytes consumed.
pub fn parse(buf: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(nl) = buf[at..].iter().position(|&b| b == b'\n') {
        let header = String::from_utf8_lossy(&buf[at..at + nl]).into_owned();
        let mut words = header.split(' ');
        let stream = match words.next() {
            Some("stdout") => Stream::Stdout,
            Some("stderr") => Stream::Stderr,
            _ => break,
        };
        let (Some(Ok(time_ns)), Some(Ok(len))) = (
            words.next().map(str::parse::<u128>),
            words.next().map(str::parse::<usize>),
        ) else {
            break;
        };
        let start = at + nl + 1;
        let Some(end) = start.checked_add(len).filter(|&e| e < buf.len()) else {
            break;
        };
        records.push(Record {
            stream,
            time_ns,
            data: buf[start..end].to_vec(),
        });
        at = end + 1;
    }
    (records, at)
}

/// Reads the records after byte `offset` of the log at `path`; returns
/// them and the offset to continue from.
pub fn read_from(path: &Path, offset: u64) -> io::Result<(Vec<Record>, u64)> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), offset)),
        Err(e) => return Err(e),
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    file.take(64 << 20).read_to_end(&mut buf)?;
    let (records, used) = parse(&buf);
    Ok((records, offset + used as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_partial_ones_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let w = LogWriter::open(&path).unwrap();
        w.record(Stream::Stdout, b"hello\n");
        w.record(Stream::Stderr, b"bin\0ary\nstuff");
        let (records, end) = read_from(&path, 0).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].data, b"hello\n");
        assert_eq!(records[1].stream, Stream::Stderr);
        assert_eq!(records[1].data, b"bin\0ary\nstuff");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"stdout 1 10\nabc").unwrap();
        let (more, end2) = read_from(&path, end).unwrap();
        assert!(more.is_empty());
        assert_eq!(end2, end);
        f.write_all(b"defghij\n").unwrap();
        let (more, _) = read_from(&path, end).unwrap();
        assert_eq!(more[0].data, b"abcdefghij");
    }
}
