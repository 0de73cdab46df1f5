//! Results: latency histograms, rates, and how they are printed (a table
//! for people, one JSON object for machines).

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// A latency histogram in microseconds.
pub struct Latency(Histogram<u64>);

impl Latency {
    /// An empty histogram (1 µs to 10 min, 3 significant digits).
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
    }

    /// Records one latency.
    pub fn record(&mut self, d: std::time::Duration) {
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        let _ = self.0.record(us);
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// A quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.0.value_at_quantile(q)
    }

    /// Percentiles in milliseconds: p50, p90, p99, p999, max.
    pub fn json(&self) -> Value {
        let ms = |us: u64| us as f64 / 1000.0;
        json!({
            "count": self.0.len(),
            "p50_ms": ms(self.0.value_at_quantile(0.50)),
            "p90_ms": ms(self.0.value_at_quantile(0.90)),
            "p99_ms": ms(self.0.value_at_quantile(0.99)),
            "p999_ms": ms(self.0.value_at_quantile(0.999)),
            "max_ms": ms(self.0.max()),
        })
    }
}

/// A scenario's figures, in insertion order.
#[derive(Default)]
pub struct Report {
    fields: Map<String, Value>,
}

impl Report {
    /// Sets a figure.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    /// Sets `<who>_rss_bytes`, `<who>_peak_rss_bytes` and `<who>_cpu_cores`
    /// from a [`crate::server::Sampler`]'s figures, where known.
    pub fn set_process(
        &mut self,
        who: &str,
        (rss, peak, cpu): (Option<u64>, Option<u64>, Option<f64>),
    ) {
        if let Some(v) = rss {
            self.set(&format!("{who}_rss_bytes"), v);
        }
        if let Some(v) = peak {
            self.set(&format!("{who}_peak_rss_bytes"), v);
        }
        if let Some(v) = cpu {
            self.set(&format!("{who}_cpu_cores"), v);
        }
    }

    /// Prints the report as a table, or as one JSON object.
    pub fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", Value::Object(self.fields.clone()));
            return;
        }
        let width = self.fields.keys().map(|k| k.len()).max().unwrap_or(0);
        for (k, v) in &self.fields {
            match v {
                Value::Object(o) => {
                    let parts: Vec<String> = o
                        .iter()
                        .map(|(k, v)| match v.as_f64() {
                            Some(f) if f.fract() != 0.0 => format!("{k}={f:.3}"),
                            _ => format!("{k}={v}"),
                        })
                        .collect();
                    println!("{k:width$}  {}", parts.join("  "));
                }
                Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => {
                    println!("{k:width$}  {:.1}", n.as_f64().unwrap_or_default())
                }
                _ => println!("{k:width$}  {v}"),
            }
        }
    }
}
