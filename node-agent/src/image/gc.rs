//! Image garbage collection as kubelet's image manager does it (pure): when the image
//! filesystem is fuller than `--image-gc-high-threshold` (85 %), images no pod on the node
//! uses, unused for at least `--minimum-image-ttl-duration` (2 minutes), are removed, the
//! longest unused first, until usage is back under `--image-gc-low-threshold` (80 %).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;

use super::ImageRecord;

/// The thresholds (kubelet's flags and defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub min_age: Duration,
}

impl Default for GcPolicy {
    fn default() -> GcPolicy {
        GcPolicy {
            high_percent: 85,
            low_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

impl GcPolicy {
    /// kubelet's checks: thresholds in 0..=100, low below high.
    pub fn validate(&self) -> Result<(), String> {
        if self.high_percent > 100 || self.low_percent > 100 {
            return Err("image GC thresholds must be percentages (0-100)".into());
        }
        if self.low_percent >= self.high_percent {
            return Err(format!(
                "--image-gc-low-threshold ({}) must be less than --image-gc-high-threshold ({})",
                self.low_percent, self.high_percent
            ));
        }
        Ok(())
    }
}

/// The image filesystem's usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

/// The digests to remove, in order. `unused_since` says since when each image (by digest)
/// has been seen unused; `in_use` holds the digests of images pods on the node use.
pub fn plan(
    disk: DiskUsage,
    images: &[ImageRecord],
    in_use: &BTreeSet<String>,
    unused_since: &BTreeMap<String, Timestamp>,
    policy: &GcPolicy,
    now: Timestamp,
) -> Vec<String> {
    if disk.capacity_bytes == 0 {
        return Vec::new();
    }
    let percent = |used: u64| used.saturating_mul(100) / disk.capacity_bytes;
    if percent(disk.used_bytes) < u64::from(policy.high_percent) {
        return Vec::new();
    }
    let target = disk
        .capacity_bytes
        .saturating_mul(u64::from(policy.low_percent))
        / 100;
    let mut candidates: Vec<(&Timestamp, &ImageRecord)> = images
        .iter()
        .filter(|image| !in_use.contains(&image.digest))
        .filter_map(|image| {
            let since = unused_since.get(&image.digest)?;
            let age = now.duration_since(*since).unsigned_abs();
            (age >= policy.min_age).then_some((since, image))
        })
        .collect();
    candidates.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.digest.cmp(&b.1.digest)));
    let mut used = disk.used_bytes;
    let mut out = Vec::new();
    for (_, image) in candidates {
        if used <= target {
            break;
        }
        used = used.saturating_sub(image.size);
        out.push(image.digest.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    fn image(digest: &str, size: u64) -> ImageRecord {
        ImageRecord {
            references: vec![format!("docker.io/library/{digest}:1")],
            digest: digest.into(),
            config: ImageConfig::default(),
            layers: vec![],
            size,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    #[test]
    fn removes_the_longest_unused_until_under_the_low_threshold() {
        let policy = GcPolicy::default();
        let images = [
            image("a", 30),
            image("b", 10),
            image("c", 5),
            image("fresh", 50),
            image("used", 50),
        ];
        let in_use = BTreeSet::from(["used".to_string()]);
        let since = BTreeMap::from([
            ("a".to_string(), at(100)),
            ("b".to_string(), at(0)),
            ("c".to_string(), at(50)),
            ("fresh".to_string(), at(990)),
            ("used".to_string(), at(0)),
        ]);
        // 90 of 100 used: down to 80 takes b (oldest, 10) — 80 is not above the target.
        let disk = DiskUsage {
            used_bytes: 90,
            capacity_bytes: 100,
        };
        assert_eq!(
            plan(disk, &images, &in_use, &since, &policy, at(1000)),
            vec!["b".to_string()]
        );
        // 99 used: b, c (84 left), then a; never the fresh (under 2 minutes) or the used one.
        let disk = DiskUsage {
            used_bytes: 99,
            capacity_bytes: 100,
        };
        assert_eq!(
            plan(disk, &images, &in_use, &since, &policy, at(1000)),
            ["b", "c", "a"]
        );
        // Under the high threshold nothing goes.
        let disk = DiskUsage {
            used_bytes: 84,
            capacity_bytes: 100,
        };
        assert!(plan(disk, &images, &in_use, &since, &policy, at(1000)).is_empty());
        assert!(
            GcPolicy {
                high_percent: 80,
                low_percent: 80,
                min_age: Duration::ZERO
            }
            .validate()
            .is_err()
        );
        assert!(policy.validate().is_ok());
    }
}
