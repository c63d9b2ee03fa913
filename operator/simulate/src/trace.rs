//! The trace: the jobs to replay, one row each.
//!
//! CSV with a header, or YAML (a list of rows); the file name decides (`.yaml` /
//! `.yml` is YAML, anything else CSV). Columns, in any order:
//!
//! | column        | meaning                                              |
//! | ------------- | ---------------------------------------------------- |
//! | `submit`      | submission time, seconds from the start of the trace |
//! | `tenant`      | the Tenant                                           |
//! | `pool`        | the GpuPool                                          |
//! | `nodes`       | pods of the gang                                     |
//! | `gpusPerNode` | GPUs per pod                                         |
//! | `duration`    | run time once started, seconds                       |
//! | `priority`    | optional: an integer, or a PriorityClass name        |
//! | `pack`        | optional: `rack` or `block` — all pods in one domain |
//!
//! Times may be fractional; the simulator works in whole seconds (submissions
//! rounded down, durations up, at least 1 s).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A priority as written in the trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Priority {
    /// A plain integer.
    Value(i64),
    /// A PriorityClass name.
    Class(String),
}

/// One row of the trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Submission time, seconds.
    #[serde(serialize_with = "whole_if_whole")]
    pub submit: f64,
    /// Tenant name.
    pub tenant: String,
    /// Pool name.
    pub pool: String,
    /// Pods of the gang.
    pub nodes: u32,
    /// GPUs per pod.
    pub gpus_per_node: u32,
    /// Run time, seconds.
    #[serde(serialize_with = "whole_if_whole")]
    pub duration: f64,
    /// Priority (integer or class name); empty = the default.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Topology level to pack into (`rack`, `block`); empty = none.
    #[serde(default)]
    pub pack: Option<String>,
}

/// Write `60` rather than `60.0`: traces stay short and read like the examples.
fn whole_if_whole<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        s.serialize_i64(*x as i64)
    } else {
        s.serialize_f64(*x)
    }
}

/// Read a trace file (CSV, or YAML if it ends in `.yaml`/`.yml`).
pub fn load(path: &Path) -> Result<Vec<Row>> {
    let is_yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read trace {}", path.display()))?;
    let rows = if is_yaml {
        serde_yaml::from_reader(std::io::BufReader::new(file))
            .with_context(|| format!("trace {}: expected a YAML list of rows", path.display()))?
    } else {
        read_csv(std::io::BufReader::with_capacity(1 << 20, file))
            .with_context(|| format!("trace {}", path.display()))?
    };
    check(&rows)?;
    Ok(rows)
}

/// Parse CSV rows (with a header line).
pub fn read_csv(reader: impl std::io::Read) -> Result<Vec<Row>> {
    let mut csv = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(reader);
    let mut rows = Vec::new();
    for (i, row) in csv.deserialize().enumerate() {
        let row: Row = row.with_context(|| format!("row {}", i + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

fn check(rows: &[Row]) -> Result<()> {
    for (i, r) in rows.iter().enumerate() {
        if !(r.submit.is_finite() && r.submit >= 0.0) {
            bail!("row {}: submit must be a time ≥ 0 in seconds", i + 1);
        }
        if !(r.duration.is_finite() && r.duration > 0.0) {
            bail!("row {}: duration must be > 0 seconds", i + 1);
        }
    }
    Ok(())
}

/// Write rows as CSV (the generator's output).
pub fn write_csv(rows: impl IntoIterator<Item = Row>, out: impl std::io::Write) -> Result<()> {
    let mut csv = csv::Writer::from_writer(out);
    for row in rows {
        csv.serialize(row)?;
    }
    csv.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_with_optional_priority_and_pack() {
        let text = "\
# a comment
submit,tenant,pool,nodes,gpusPerNode,duration,priority,pack
0,acme,h100,2,8,3600,aifactory-high,rack
60.5, uni-lab ,h100,1,1,30,,
120,acme,h100,1,4,600,100,
";
        let rows = read_csv(text.as_bytes()).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[0].priority,
            Some(Priority::Class("aifactory-high".into()))
        );
        assert_eq!(rows[0].pack.as_deref(), Some("rack"));
        assert_eq!(rows[1].tenant, "uni-lab");
        assert_eq!(
            (rows[1].priority.clone(), rows[1].pack.clone()),
            (None, None)
        );
        assert_eq!(rows[2].priority, Some(Priority::Value(100)));
    }

    #[test]
    fn written_rows_read_back_with_whole_seconds() {
        let text = "submit,tenant,pool,nodes,gpusPerNode,duration,priority,pack\n\
                    0,acme,h100,2,8,3600,aifactory-high,rack\n\
                    1.5,acme,h100,1,1,30,,\n";
        let rows = read_csv(text.as_bytes()).unwrap();
        let mut out = Vec::new();
        write_csv(rows.clone(), &mut out).unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap(), text);
        assert_eq!(read_csv(out.as_slice()).unwrap(), rows);
    }

    #[test]
    fn yaml_rows() {
        let text = "- {submit: 0, tenant: acme, pool: h100, nodes: 1, gpusPerNode: 8, duration: 60, priority: 5}\n";
        let rows: Vec<Row> = serde_yaml::from_str(text).unwrap();
        assert_eq!(rows[0].priority, Some(Priority::Value(5)));
    }
}
