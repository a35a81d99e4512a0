//! Where lines go: stderr, or a file that rotates by size and by UTC day and keeps a set
//! number of old files. Owned by the writer thread alone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// How a file sink rotates.
#[derive(Clone, Debug, Default)]
pub struct Rotation {
    /// Start a new file before one would grow past this many bytes (0: never).
    pub max_bytes: u64,
    /// Start a new file when the UTC day changes.
    pub daily: bool,
    /// Rotated files kept (the oldest beyond this are deleted; 0 keeps them all).
    pub keep: usize,
}

/// Lines buffered before they are written out in one go.
const BUFFER: usize = 256 * 1024;

enum Target {
    Stderr,
    File(FileTarget),
}

struct FileTarget {
    path: PathBuf,
    file: File,
    /// The file's size counting what is buffered: rotation decides on it.
    size: u64,
    day: i64,
    rotation: Rotation,
}

/// Lines go into a buffer and out in one write. Every line is accounted for exactly:
/// written once its bytes reached the file, lost when a write failed (the buffer is then
/// dropped, not retried forever). `take_counts` hands both to the writer thread.
pub struct Sink {
    target: Target,
    buf: Vec<u8>,
    pending: u64,
    written: u64,
    lost: u64,
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Sink {
    pub fn stderr() -> Sink {
        Sink::new(Target::Stderr)
    }

    /// Opens (creating) the file now, so a path that cannot be written fails at configuration.
    pub fn file(path: PathBuf, rotation: Rotation, day: i64) -> io::Result<Sink> {
        let file = open_append(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Sink::new(Target::File(FileTarget { path, file, size, day, rotation })))
    }

    fn new(target: Target) -> Sink {
        Sink { target, buf: Vec::with_capacity(BUFFER), pending: 0, written: 0, lost: 0 }
    }

    /// Buffers one line, first rotating if it would cross a limit; writes the buffer out
    /// when it is full.
    pub fn write_line(&mut self, line: &[u8], day: i64) -> io::Result<()> {
        let rotate = match &self.target {
            Target::File(f) => {
                let r = &f.rotation;
                // Days only move forward: a line stamped a little earlier than the one before
                // (a drop notice, a clock step) does not rotate back.
                (r.max_bytes > 0 && f.size > 0 && f.size + line.len() as u64 > r.max_bytes) || (r.daily && day > f.day)
            }
            Target::Stderr => false,
        };
        if rotate {
            let rotated = self.flush().and_then(|_| match &mut self.target {
                Target::File(f) => f.rotate(),
                Target::Stderr => Ok(()),
            });
            if let Err(e) = rotated {
                self.lost += 1; // the line in hand
                return Err(e);
            }
        }
        if let Target::File(f) = &mut self.target {
            f.day = f.day.max(day);
            f.size += line.len() as u64;
        }
        self.buf.extend_from_slice(line);
        self.pending += 1;
        if self.buf.len() >= BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffer out; true if there was something to write. On failure its lines
    /// are counted lost and dropped.
    pub fn flush(&mut self) -> io::Result<bool> {
        if self.buf.is_empty() {
            return Ok(false);
        }
        let outcome = match &mut self.target {
            Target::Stderr => io::stderr().write_all(&self.buf),
            Target::File(f) => f.file.write_all(&self.buf),
        };
        match outcome {
            Ok(()) => self.written += self.pending,
            Err(_) => {
                self.lost += self.pending;
                if let Target::File(f) = &mut self.target {
                    f.size = f.file.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        self.buf.clear();
        self.pending = 0;
        outcome.map(|()| true)
    }

    /// Lines written and lost since the last call.
    pub fn take_counts(&mut self) -> (u64, u64) {
        let counts = (self.written, self.lost);
        self.written = 0;
        self.lost = 0;
        counts
    }

    /// Reopens the file by name (after logrotate moved it away: SIGHUP).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.flush()?;
        if let Target::File(f) = &mut self.target {
            f.file = open_append(&f.path)?;
            f.size = f.file.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(())
    }
}

impl FileTarget {
    /// `app.log` becomes `app.log.<n>` with n one more than the highest there; the oldest
    /// beyond `keep` are deleted.
    fn rotate(&mut self) -> io::Result<()> {
        let mut numbers = self.rotated()?;
        let next = numbers.last().map_or(1, |n| n + 1);
        match fs::rename(&self.path, self.numbered(next)) {
            Ok(()) => numbers.push(next),
            // Somebody moved or removed the file: there is nothing to rotate, only a file
            // to start again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if self.rotation.keep > 0 && numbers.len() > self.rotation.keep {
            for n in &numbers[..numbers.len() - self.rotation.keep] {
                let _ = fs::remove_file(self.numbered(*n));
            }
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn numbered(&self, n: u64) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// The numbers of the rotated files present, ascending.
    /// A directory that cannot be listed is an error: numbering blind would overwrite.
    fn rotated(&self) -> io::Result<Vec<u64>> {
        let (Some(dir), Some(base)) = (self.path.parent(), self.path.file_name().and_then(|b| b.to_str())) else {
            return Ok(Vec::new());
        };
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let prefix = format!("{base}.");
        let mut numbers: Vec<u64> = fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix(&prefix)?.parse().ok())
            .collect();
        numbers.sort_unstable();
        Ok(numbers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("luanet-sink-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest() {
        let dir = tmpdir("size");
        let path = dir.join("app.log");
        let mut s = Sink::file(path.clone(), Rotation { max_bytes: 100, daily: false, keep: 2 }, 0).unwrap();
        for _ in 0..10 {
            s.write_line(&[b'x'; 49], 0).unwrap();
            s.write_line(b"\n", 0).unwrap();
        }
        s.flush().unwrap();
        // 10 lines of 50 bytes, 2 per file: 5 files made, the live one and the 2 newest kept.
        assert_eq!(fs::read(&path).unwrap().len(), 100);
        assert!(dir.join("app.log.4").exists() && dir.join("app.log.3").exists());
        assert!(!dir.join("app.log.2").exists() && !dir.join("app.log.1").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotates_when_the_day_changes() {
        let dir = tmpdir("day");
        let path = dir.join("app.log");
        let mut s = Sink::file(path.clone(), Rotation { max_bytes: 0, daily: true, keep: 0 }, 5).unwrap();
        s.write_line(b"day 5\n", 5).unwrap();
        s.write_line(b"day 6\n", 6).unwrap();
        s.flush().unwrap();
        assert_eq!(fs::read_to_string(dir.join("app.log.1")).unwrap(), "day 5\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "day 6\n");
        let _ = fs::remove_dir_all(&dir);
    }
}
