//! Records in anonymous temporary files: what planning writes once and reads back once, in
//! order, so that a sheet of any size passes through without being held in memory. A plain
//! binary layout (little-endian integers, length-prefixed text): the files never outlive the
//! process that wrote them, so no format has to be kept stable.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use uuid::Uuid;

/// Writes records to a fresh temporary file in `dir` (deleted when the last handle closes).
pub struct SpillWriter {
    out: BufWriter<File>,
}

impl SpillWriter {
    /// `buffer`: bytes kept before each write to the file.
    pub fn create_in(dir: &Path, buffer: usize) -> io::Result<SpillWriter> {
        Ok(SpillWriter {
            out: BufWriter::with_capacity(buffer, tempfile::tempfile_in(dir)?),
        })
    }

    pub fn u8(&mut self, value: u8) -> io::Result<()> {
        self.out.write_all(&[value])
    }

    pub fn u64(&mut self, value: u64) -> io::Result<()> {
        self.out.write_all(&value.to_le_bytes())
    }

    pub fn uuid(&mut self, value: &Uuid) -> io::Result<()> {
        self.out.write_all(value.as_bytes())
    }

    pub fn str(&mut self, value: &str) -> io::Result<()> {
        self.u64(value.len() as u64)?;
        self.out.write_all(value.as_bytes())
    }

    /// Everything written, to be read from the start.
    pub fn into_reader(self, buffer: usize) -> io::Result<SpillReader> {
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(SpillReader {
            input: BufReader::with_capacity(buffer, file),
        })
    }
}

/// Reads back what a [`SpillWriter`] wrote, in the same order and with the same calls.
pub struct SpillReader {
    input: BufReader<File>,
}

impl SpillReader {
    pub fn u8(&mut self) -> io::Result<u8> {
        let mut byte = [0; 1];
        self.input.read_exact(&mut byte)?;
        Ok(byte[0])
    }

    pub fn u64(&mut self) -> io::Result<u64> {
        let mut bytes = [0; 8];
        self.input.read_exact(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    pub fn uuid(&mut self) -> io::Result<Uuid> {
        let mut bytes = [0; 16];
        self.input.read_exact(&mut bytes)?;
        Ok(Uuid::from_bytes(bytes))
    }

    pub fn string(&mut self) -> io::Result<String> {
        let mut text = String::new();
        self.string_into(&mut text)?;
        Ok(text)
    }

    /// Reads a text into `text`, reusing its allocation (for passes over many records).
    pub fn string_into(&mut self, text: &mut String) -> io::Result<()> {
        let len = self.u64()? as usize;
        let mut bytes = std::mem::take(text).into_bytes();
        bytes.clear();
        bytes.resize(len, 0);
        self.input.read_exact(&mut bytes)?;
        *text =
            String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(())
    }

    /// Goes back to the first record (for a second pass).
    pub fn rewind(&mut self) -> io::Result<()> {
        self.input.seek(SeekFrom::Start(0)).map(drop)
    }

    /// True when everything written has been read.
    pub fn at_end(&mut self) -> io::Result<bool> {
        use std::io::BufRead;
        Ok(self.input.fill_buf()?.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_and_knows_its_end() {
        let dir = std::env::temp_dir();
        let mut out = SpillWriter::create_in(&dir, 3).unwrap();
        let id = Uuid::new_v4();
        out.u8(7).unwrap();
        out.str("ünïcode, and more than three bytes").unwrap();
        out.u64(u64::MAX - 1).unwrap();
        out.uuid(&id).unwrap();
        out.str("").unwrap();
        let mut back = out.into_reader(5).unwrap();
        for _ in 0..2 {
            assert_eq!(back.u8().unwrap(), 7);
            assert_eq!(back.string().unwrap(), "ünïcode, and more than three bytes");
            assert_eq!(back.u64().unwrap(), u64::MAX - 1);
            assert_eq!(back.uuid().unwrap(), id);
            assert_eq!(back.string().unwrap(), "");
            assert!(back.at_end().unwrap());
            assert!(back.u8().is_err(), "nothing past the end");
            back.rewind().unwrap();
        }
    }
}
