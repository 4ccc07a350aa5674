//! Writing a list of buffers with `writev`, partial writes included.

use std::io::IoSlice;

use bytes::Bytes;

/// Most slices passed to one `writev`.
pub(crate) const MAX_IOV: usize = 64;

/// Where the next byte to write is: a buffer and an offset in it.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    part: usize,
    offset: usize,
}

impl Cursor {
    /// Whether every byte of `parts` was written.
    pub(crate) fn done(&self, parts: &[Bytes]) -> bool {
        self.part >= parts.len()
    }

    /// The slices still to write, at most [`MAX_IOV`].
    pub(crate) fn slices<'a>(&self, parts: &'a [Bytes]) -> Vec<IoSlice<'a>> {
        parts
            .get(self.part)
            .map(|p| &p[self.offset..])
            .into_iter()
            .chain(parts.iter().skip(self.part + 1).map(|p| &p[..]))
            .take(MAX_IOV)
            .map(IoSlice::new)
            .collect()
    }

    /// `n` more bytes were written. Skips empty buffers, so the next slice
    /// list starts with bytes.
    pub(crate) fn advance(&mut self, parts: &[Bytes], mut n: usize) {
        while n > 0 && self.part < parts.len() {
            let left = parts[self.part].len() - self.offset;
            if n >= left {
                n -= left;
                self.part += 1;
                self.offset = 0;
            } else {
                self.offset += n;
                n = 0;
            }
        }
        while self.part < parts.len() && parts[self.part].len() == self.offset {
            self.part += 1;
            self.offset = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_across_parts_and_skips_empty_ones() {
        let parts = [
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"f"),
        ];
        let mut c = Cursor::default();
        assert_eq!(c.slices(&parts).len(), 4);
        c.advance(&parts, 2);
        assert_eq!(&*c.slices(&parts)[0], b"c");
        c.advance(&parts, 1);
        assert_eq!(&*c.slices(&parts)[0], b"de", "the empty part is skipped");
        c.advance(&parts, 3);
        assert!(c.done(&parts));
        assert!(c.slices(&parts).is_empty());
    }
}
