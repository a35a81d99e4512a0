//! Bytes waiting in one direction of a stream: received but not yet read by Lua, or
//! accepted by `write` but not yet taken by the kernel.
//!
//! A socket holds each as `Option<Box<Pending>>`, created on first use: in the common
//! request/response case nothing is ever buffered, so the socket's hot state stays within
//! one cache line and an idle connection pays 16 bytes for both directions.

/// How large a drained buffer may stay; a bigger one is given back to the allocator.
const KEEP_CAPACITY: usize = 64 * 1024;

#[derive(Default)]
pub struct Pending {
    bytes: Vec<u8>,
    /// Bytes before `pos` are consumed; moving data up happens only when it pays.
    pos: usize,
    /// How many pending bytes `read_line` has already searched for a newline.
    pub scanned: usize,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.bytes.len()
    }

    pub fn data(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    pub fn append(&mut self, data: &[u8]) {
        if self.is_empty() {
            self.bytes.clear();
            self.pos = 0;
        } else if self.pos > KEEP_CAPACITY && self.pos * 2 > self.bytes.len() {
            self.bytes.drain(..self.pos);
            self.pos = 0;
        }
        self.bytes.extend_from_slice(data);
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.bytes.len());
        self.scanned = 0;
        if self.is_empty() {
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.pos = 0;
        self.scanned = 0;
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes.shrink_to(KEEP_CAPACITY);
        }
    }
}

/// The bytes of an optional buffer (empty when it was never created).
pub fn data(buffer: &Option<Box<Pending>>) -> &[u8] {
    buffer.as_deref().map_or(&[], Pending::data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_consume_and_compact() {
        let mut p = Pending::default();
        p.append(b"hello ");
        p.append(b"world");
        assert_eq!(p.data(), b"hello world");
        p.consume(6);
        assert_eq!(p.data(), b"world");
        p.consume(100);
        assert!(p.is_empty());
        let big = vec![1u8; 3 * KEEP_CAPACITY];
        p.append(&big);
        p.consume(2 * KEEP_CAPACITY + 1);
        p.append(b"x");
        assert_eq!(p.len(), KEEP_CAPACITY);
        assert_eq!(p.pos, 0, "consumed bytes were moved out once they were most of the buffer");
        p.consume(p.len());
        assert!(p.bytes.capacity() <= KEEP_CAPACITY, "a drained buffer gives large memory back");
    }

    #[test]
    fn a_missing_buffer_reads_as_empty() {
        assert!(data(&None).is_empty());
    }
}
