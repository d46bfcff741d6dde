//! Column-wise splicing of Parquet files: the columns of one file followed by those of
//! another, row group by row group, copied as their encoded (compressed, checksummed) bytes.
//!
//! Why: a score shard is its generate shard plus a handful of new columns. Decoding the
//! generate columns (token-id and log-prob lists are most of the bytes) only to re-encode
//! them identically was most of the score stage's time; copying the column chunks costs a
//! `memcpy`. Only the footer is rewritten, with page offsets moved to where the chunks land.

// The Python binding (`splice_parquet`), beside the kernel it binds.
#[cfg(feature = "python")]
pub(crate) mod py;

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use sha2::{Digest, Sha256};

/// A Parquet file held in memory, read in place (no copy of the column chunks).
struct Slice<'a>(&'a [u8]);

impl Slice<'_> {
    fn range(&self, start: u64, length: usize) -> Result<&[u8]> {
        let start = usize::try_from(start).map_err(|_| ParquetError::EOF("offset".into()))?;
        self.0
            .get(start..start.saturating_add(length).min(self.0.len()))
            .filter(|s| s.len() == length)
            .ok_or_else(|| {
                ParquetError::EOF(format!(
                    "{length} bytes at offset {start} of a {}-byte file",
                    self.0.len()
                ))
            })
    }
}

impl Length for Slice<'_> {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
}

impl<'a> ChunkReader for Slice<'a> {
    type T = &'a [u8];

    fn get_read(&self, start: u64) -> Result<&'a [u8]> {
        let start = usize::try_from(start).map_err(|_| ParquetError::EOF("offset".into()))?;
        self.0
            .get(start..)
            .ok_or_else(|| ParquetError::EOF(format!("offset {start} past the file's end")))
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes> {
        Ok(Bytes::copy_from_slice(self.range(start, length)?))
    }
}

fn footer(file: &Slice<'_>, which: &str) -> Result<ParquetMetaData> {
    ParquetMetaDataReader::new()
        .parse_and_finish(file)
        .map_err(|e| ParquetError::General(format!("{which} file: {e}")))
}

/// The columns of `left` then those of `right` as one Parquet file written to `out`, whose
/// footer carries `key_value` (and nothing of either input's key-value metadata) and names
/// `created_by` as its writer (the one that encoded the chunks; parquet-rs if `None`). Both
/// files must have the same row groups (count and rows per group); every column chunk is
/// copied byte for byte.
pub fn splice<W: Write + Send>(
    left: &[u8],
    right: &[u8],
    key_value: Vec<(String, String)>,
    created_by: Option<String>,
    out: W,
) -> Result<()> {
    let (l, r) = (Slice(left), Slice(right));
    let (lm, rm) = (footer(&l, "left")?, footer(&r, "right")?);
    let (lg, rg) = (lm.row_groups(), rm.row_groups());
    if lg.len() != rg.len() {
        return Err(ParquetError::General(format!(
            "the files have {} and {} row groups; they must have the same row groups",
            lg.len(),
            rg.len()
        )));
    }
    if let Some((i, (a, b))) = lg
        .iter()
        .zip(rg)
        .enumerate()
        .find(|(_, (a, b))| a.num_rows() != b.num_rows())
    {
        return Err(ParquetError::General(format!(
            "row group {i} has {} rows on the left and {} on the right",
            a.num_rows(),
            b.num_rows()
        )));
    }
    let (ls, rs) = (lm.file_metadata().schema(), rm.file_metadata().schema());
    let mut fields = ls.get_fields().to_vec();
    for f in rs.get_fields() {
        if fields.iter().any(|x| x.name() == f.name()) {
            return Err(ParquetError::General(format!(
                "column {:?} is in both files",
                f.name()
            )));
        }
        fields.push(f.clone());
    }
    let schema = Type::group_type_builder(ls.name())
        .with_fields(fields)
        .build()?;
    let mut props = WriterProperties::builder();
    if let Some(name) = created_by {
        props = props.set_created_by(name);
    }
    let props = props
        .set_key_value_metadata(Some(
            key_value
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v))
                .collect(),
        ))
        .build();
    let mut writer = SerializedFileWriter::new(out, Arc::new(schema), Arc::new(props))?;
    for (a, b) in lg.iter().zip(rg) {
        let mut group = writer.next_row_group()?;
        for (file, meta) in [(&l, a), (&r, b)] {
            for column in meta.columns() {
                let chunk = ColumnCloseResult {
                    bytes_written: column.compressed_size() as u64,
                    rows_written: meta.num_rows() as u64,
                    metadata: column.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: None,
                };
                group.append_column(file, chunk)?;
            }
        }
        group.close()?;
    }
    writer.close()?;
    Ok(())
}

/// A writer that hashes (sha256) what it passes on.
pub struct Sha256Writer<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the hex sha256 and the byte count of everything written.
    pub fn finish(self) -> (W, String, u64) {
        let digest = self.hasher.finalize();
        let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
        (self.inner, hex, self.written)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::data_type::Int64Type;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    use parquet::schema::parser::parse_message_type;

    fn splice_vec(
        left: &[u8],
        right: &[u8],
        key_value: Vec<(String, String)>,
        created_by: Option<String>,
    ) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        splice(left, right, key_value, created_by, &mut out)?;
        Ok(out)
    }

    /// A file of one required INT64 column `name`, one row group per slice of `groups`.
    fn file(name: &str, groups: &[&[i64]]) -> Vec<u8> {
        let schema = parse_message_type(&format!("message schema {{ REQUIRED INT64 {name}; }}"))
            .expect("schema");
        let mut out = Vec::new();
        let mut w = SerializedFileWriter::new(
            &mut out,
            Arc::new(schema),
            Arc::new(WriterProperties::builder().build()),
        )
        .expect("writer");
        for values in groups {
            let mut g = w.next_row_group().expect("row group");
            let mut c = g.next_column().expect("column").expect("a column");
            c.typed::<Int64Type>()
                .write_batch(values, None, None)
                .expect("write");
            c.close().expect("close column");
            g.close().expect("close group");
        }
        w.close().expect("close file");
        out
    }

    fn rows(data: Vec<u8>) -> Vec<Vec<i64>> {
        let reader = SerializedFileReader::new(Bytes::from(data)).expect("reader");
        reader
            .get_row_iter(None)
            .expect("rows")
            .map(|row| {
                row.expect("row")
                    .get_column_iter()
                    .map(|(_, f)| match f {
                        Field::Long(v) => *v,
                        other => panic!("unexpected {other:?}"),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn columns_of_both_files_row_by_row() {
        let a = file("a", &[&[1, 2, 3], &[4, 5]]);
        let b = file("b", &[&[10, 20, 30], &[40, 50]]);
        let out =
            splice_vec(&a, &b, vec![("k".into(), "v".into())], Some("w".into())).expect("splice");
        let reader = SerializedFileReader::new(Bytes::from(out.clone())).expect("reader");
        let meta = reader.metadata();
        assert_eq!(meta.num_row_groups(), 2);
        assert_eq!(meta.file_metadata().created_by(), Some("w"));
        let kv = meta
            .file_metadata()
            .key_value_metadata()
            .expect("key-value");
        assert_eq!(kv.len(), 1);
        assert_eq!(
            (kv[0].key.as_str(), kv[0].value.as_deref()),
            ("k", Some("v"))
        );
        assert_eq!(
            rows(out),
            vec![
                vec![1, 10],
                vec![2, 20],
                vec![3, 30],
                vec![4, 40],
                vec![5, 50]
            ]
        );
    }

    #[test]
    fn the_hashing_writer_hashes_what_it_writes() {
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"ab").expect("write");
        w.write_all(b"c").expect("write");
        let (out, hex, n) = w.finish();
        assert_eq!((out.as_slice(), n), (&b"abc"[..], 3));
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn row_groups_must_match() {
        let a = file("a", &[&[1, 2, 3], &[4, 5]]);
        let err = splice_vec(&a, &file("b", &[&[1, 2], &[3, 4, 5]]), vec![], None).unwrap_err();
        assert!(err.to_string().contains("row group 0 has 3 rows"), "{err}");
        let err = splice_vec(&a, &file("b", &[&[1, 2, 3, 4, 5]]), vec![], None).unwrap_err();
        assert!(err.to_string().contains("2 and 1 row groups"), "{err}");
        let err = splice_vec(&a, &file("a", &[&[1, 2, 3], &[4, 5]]), vec![], None).unwrap_err();
        assert!(err.to_string().contains("in both files"), "{err}");
    }

    #[test]
    fn a_truncated_or_foreign_file_is_an_error() {
        let a = file("a", &[&[1, 2, 3]]);
        let b = file("b", &[&[1, 2, 3]]);
        let err = splice_vec(&a[..a.len() - 9], &b, vec![], None).unwrap_err();
        assert!(err.to_string().contains("left file"), "{err}");
        let err = splice_vec(&a, b"not a parquet file", vec![], None).unwrap_err();
        assert!(err.to_string().contains("right file"), "{err}");
    }
}
