//! Rate profiles: records per second as a function of the time since the start.
//!
//! Written as `constant:RATE`, `steps:RATE@DURATION,RATE@DURATION,...`,
//! `ramp:FROM..TO@DURATION` or `sine:MEAN~AMPLITUDE/PERIOD@DURATION` (durations such as `30s`,
//! `2m`). A profile ends after its total duration (`constant` runs until stopped).

use std::{fmt, str::FromStr, time::Duration};

/// Why a profile does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "rate profile {text:?}: {reason} (expected constant:RATE, steps:RATE@DURATION,..., ramp:FROM..TO@DURATION or sine:MEAN~AMPLITUDE/PERIOD@DURATION)"
)]
pub struct ProfileError {
    text: String,
    reason: ProfileProblem,
}

/// What is wrong in a profile.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileProblem {
    /// No `KIND:` prefix.
    #[error("no kind")]
    NoKind,
    /// A kind other than the four.
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    /// A rate that is not a number.
    #[error("{0:?} is not a rate (records per second)")]
    NotARate(String),
    /// A negative, infinite or NaN rate.
    #[error("rate {0:?} must be a number ≥ 0")]
    RateOutOfRange(String),
    /// A duration that does not parse.
    #[error("{text:?}: {source}")]
    NotADuration {
        /// The text.
        text: String,
        /// Why.
        source: pipeline_crds::DurationParseError,
    },
    /// A zero duration.
    #[error("duration {0:?} must be positive")]
    ZeroDuration(String),
    /// A part without `@DURATION`.
    #[error("{0:?} has no @DURATION")]
    NoDuration(String),
    /// A ramp without `FROM..TO`.
    #[error("{0:?} is not FROM..TO")]
    NotARange(String),
    /// A sine without `/PERIOD`.
    #[error("{0:?} has no /PERIOD")]
    NoPeriod(String),
    /// A sine without `MEAN~AMPLITUDE`.
    #[error("{0:?} is not MEAN~AMPLITUDE")]
    NotMeanAndAmplitude(String),
}

/// A rate over time.
#[derive(Clone, Debug, PartialEq)]
pub enum Profile {
    /// One rate, until stopped.
    Constant(f64),
    /// Each rate for its duration, in order.
    Steps(Vec<(f64, Duration)>),
    /// From one rate to another, linearly, over a duration.
    Ramp {
        /// Rate at the start.
        from: f64,
        /// Rate at the end.
        to: f64,
        /// Length.
        over: Duration,
    },
    /// `mean + amplitude × sin(2πt / period)` for a duration.
    Sine {
        /// Mean rate.
        mean: f64,
        /// Swing either side of the mean.
        amplitude: f64,
        /// Period.
        period: Duration,
        /// Length.
        over: Duration,
    },
}

impl Profile {
    /// Records per second at `t` since the start; `None` once the profile has ended.
    pub fn rate_at(&self, t: Duration) -> Option<f64> {
        match self {
            Self::Constant(rate) => Some(*rate),
            Self::Steps(steps) => {
                let mut start = Duration::ZERO;
                for (rate, length) in steps {
                    if t < start + *length {
                        return Some(*rate);
                    }
                    start += *length;
                }
                None
            }
            Self::Ramp { from, to, over } => (t < *over)
                .then(|| from + (to - from) * t.as_secs_f64() / over.as_secs_f64().max(1e-9)),
            Self::Sine {
                mean,
                amplitude,
                period,
                over,
            } => (t < *over).then(|| {
                let phase = std::f64::consts::TAU * t.as_secs_f64() / period.as_secs_f64();
                (mean + amplitude * phase.sin()).max(0.0)
            }),
        }
    }

    /// Total length; `None` for a constant rate.
    pub fn duration(&self) -> Option<Duration> {
        match self {
            Self::Constant(_) => None,
            Self::Steps(steps) => Some(steps.iter().map(|(_, d)| *d).sum()),
            Self::Ramp { over, .. } | Self::Sine { over, .. } => Some(*over),
        }
    }

    /// The highest rate it reaches.
    pub fn peak(&self) -> f64 {
        match self {
            Self::Constant(rate) => *rate,
            Self::Steps(steps) => steps.iter().map(|(r, _)| *r).fold(0.0, f64::max),
            Self::Ramp { from, to, .. } => from.max(*to),
            Self::Sine {
                mean, amplitude, ..
            } => mean + amplitude.abs(),
        }
    }
}

fn rate(text: &str) -> Result<f64, ProfileProblem> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| ProfileProblem::NotARate(text.to_owned()))?;
    if rate.is_finite() && rate >= 0.0 {
        Ok(rate)
    } else {
        Err(ProfileProblem::RateOutOfRange(text.to_owned()))
    }
}

fn duration(text: &str) -> Result<Duration, ProfileProblem> {
    let d = text
        .trim()
        .parse::<pipeline_crds::Duration>()
        .map(|d| d.get())
        .map_err(|source| ProfileProblem::NotADuration {
            text: text.to_owned(),
            source,
        })?;
    if d.is_zero() {
        return Err(ProfileProblem::ZeroDuration(text.to_owned()));
    }
    Ok(d)
}

fn at(text: &str) -> Result<(&str, Duration), ProfileProblem> {
    let (value, length) = text
        .rsplit_once('@')
        .ok_or_else(|| ProfileProblem::NoDuration(text.to_owned()))?;
    Ok((value, duration(length)?))
}

impl FromStr for Profile {
    type Err = ProfileError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason: ProfileProblem| ProfileError {
            text: text.to_owned(),
            reason,
        };
        let (kind, body) = text
            .split_once(':')
            .ok_or_else(|| error(ProfileProblem::NoKind))?;
        let parsed = match kind.trim() {
            "constant" => rate(body).map(Self::Constant),
            "steps" => body
                .split(',')
                .map(|step| at(step).and_then(|(r, d)| Ok((rate(r)?, d))))
                .collect::<Result<Vec<_>, _>>()
                .map(Self::Steps),
            "ramp" => at(body).and_then(|(range, over)| {
                let (from, to) = range
                    .split_once("..")
                    .ok_or_else(|| ProfileProblem::NotARange(range.to_owned()))?;
                Ok(Self::Ramp {
                    from: rate(from)?,
                    to: rate(to)?,
                    over,
                })
            }),
            "sine" => at(body).and_then(|(wave, over)| {
                let (levels, period) = wave
                    .split_once('/')
                    .ok_or_else(|| ProfileProblem::NoPeriod(wave.to_owned()))?;
                let (mean, amplitude) = levels
                    .split_once('~')
                    .ok_or_else(|| ProfileProblem::NotMeanAndAmplitude(levels.to_owned()))?;
                Ok(Self::Sine {
                    mean: rate(mean)?,
                    amplitude: rate(amplitude)?,
                    period: duration(period)?,
                    over,
                })
            }),
            other => Err(ProfileProblem::UnknownKind(other.to_owned())),
        };
        parsed.map_err(error)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: &Duration| pipeline_crds::Duration::from(*d).to_string();
        match self {
            Self::Constant(rate) => write!(f, "constant:{rate}"),
            Self::Steps(steps) => {
                let steps: Vec<String> =
                    steps.iter().map(|(r, l)| format!("{r}@{}", d(l))).collect();
                write!(f, "steps:{}", steps.join(","))
            }
            Self::Ramp { from, to, over } => write!(f, "ramp:{from}..{to}@{}", d(over)),
            Self::Sine {
                mean,
                amplitude,
                period,
                over,
            } => write!(f, "sine:{mean}~{amplitude}/{}@{}", d(period), d(over)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_hold_each_rate_for_its_duration_then_end() {
        let p: Profile = "steps:500@10s,3000@20s,500@5s".parse().unwrap();
        assert_eq!(p.rate_at(Duration::from_secs(9)), Some(500.0));
        assert_eq!(p.rate_at(Duration::from_secs(10)), Some(3000.0));
        assert_eq!(p.rate_at(Duration::from_secs(34)), Some(500.0));
        assert_eq!(p.rate_at(Duration::from_secs(35)), None);
        assert_eq!(p.duration(), Some(Duration::from_secs(35)));
        assert_eq!(p.peak(), 3000.0);
        assert_eq!(p.to_string().parse::<Profile>().unwrap(), p);
    }

    #[test]
    fn ramps_and_sines_follow_their_formula() {
        let r: Profile = "ramp:100..1100@10s".parse().unwrap();
        assert_eq!(r.rate_at(Duration::from_secs(5)), Some(600.0));
        let s: Profile = "sine:1000~500/40s@2m".parse().unwrap();
        let at = |secs| s.rate_at(Duration::from_secs(secs)).unwrap();
        assert!((at(10) - 1500.0).abs() < 1e-6 && (at(30) - 500.0).abs() < 1e-6);
        assert_eq!(s.rate_at(Duration::from_secs(120)), None);
    }

    #[test]
    fn a_malformed_profile_says_what_is_expected() {
        for bad in [
            "fast",
            "steps:10",
            "ramp:1-2@5s",
            "constant:-3",
            "sine:1~2@5s",
            "steps:5@0s",
        ] {
            let e = bad.parse::<Profile>().unwrap_err().to_string();
            assert!(e.contains("expected constant:RATE"), "{bad}: {e}");
        }
    }
}
