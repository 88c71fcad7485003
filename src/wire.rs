//! A cursor over untrusted little-endian bytes, for the length-prefixed
//! formats (layer objects, recipe bundles): every read is bounds-checked and
//! fails with the format's own "truncated" error, never a panic.

use crate::error::{Error, Result};

pub(crate) struct Reader<'a, F: Fn(&str) -> Error> {
    rest: &'a [u8],
    bad: F,
}

impl<'a, F: Fn(&str) -> Error> Reader<'a, F> {
    /// Read `b`; `bad` turns a complaint ("truncated", …) into the error to return.
    pub fn new(b: &'a [u8], bad: F) -> Self {
        Reader { rest: b, bad }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err((self.bad)("truncated"));
        }
        let (h, t) = self.rest.split_at(n);
        self.rest = t;
        Ok(h)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u64 length, then that many bytes.
    pub fn bytes_u64(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| (self.bad)(&format!("{what} too large")))?;
        self.take(n)
    }

    /// The bytes not read yet (still to be read).
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Fail unless every byte was read.
    pub fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err((self.bad)("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_bounds_and_refuses_the_rest() {
        let b = [1u8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 9, 9, 7];
        let bad = |w: &str| Error::invalid(w.to_string());
        let mut r = Reader::new(&b, bad);
        assert_eq!(r.u32().unwrap(), 1);
        assert_eq!(r.bytes_u64("x").unwrap(), &[9, 9]);
        assert!(r.take(2).unwrap_err().to_string().contains("truncated"));
        assert!(Reader::new(&b, bad).finish().unwrap_err().to_string().contains("trailing"));
        let mut r = Reader::new(&b[..0], bad);
        assert!(r.u64().is_err());
        r.finish().unwrap();
    }
}
