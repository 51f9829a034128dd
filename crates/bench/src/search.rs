//! The saturation step-up search: offer more each step until latency or delivery breaks a limit.
//! Pure: the caller runs each step and feeds back what it measured.

/// Limits a step must meet to count as held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub p99_ms: f64,
    pub min_delivery_ratio: f64,
}

/// What to do after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Offer this many deliveries/s next.
    Step(f64),
    /// Stop; the reason is for the report.
    Stop(String),
}

/// The search state: the rates it has tried and the best one held.
#[derive(Debug, Clone, PartialEq)]
pub struct StepUp {
    factor: f64,
    max: f64,
    limits: Limits,
    /// Offered and achieved deliveries/s of the highest step that met the limits.
    pub best: Option<(f64, f64)>,
}

impl StepUp {
    pub fn new(factor: f64, max: f64, limits: Limits) -> Self {
        Self {
            factor: factor.max(1.01),
            max,
            limits,
            best: None,
        }
    }

    /// Records a step at `offered` deliveries/s that achieved `achieved` deliveries/s with the
    /// given p99 and delivery ratio, and says what to do next.
    pub fn after(&mut self, offered: f64, achieved: f64, p99_ms: f64, delivery_ratio: f64) -> Next {
        if p99_ms > self.limits.p99_ms {
            return Next::Stop(format!(
                "p99 {p99_ms:.1} ms over {:.1} ms at {offered:.0} deliveries/s offered",
                self.limits.p99_ms
            ));
        }
        if delivery_ratio < self.limits.min_delivery_ratio {
            return Next::Stop(format!(
                "delivery ratio {delivery_ratio:.4} under {} at {offered:.0} deliveries/s offered",
                self.limits.min_delivery_ratio
            ));
        }
        self.best = Some((offered, achieved));
        let next = offered * self.factor;
        if next > self.max {
            Next::Stop(format!("reached the --max of {:.0} deliveries/s", self.max))
        } else {
            Next::Step(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search() -> StepUp {
        StepUp::new(
            2.0,
            100_000.0,
            Limits {
                p99_ms: 50.0,
                min_delivery_ratio: 0.99,
            },
        )
    }

    #[test]
    fn a_held_step_multiplies_the_rate_and_becomes_the_best() {
        let mut s = search();
        assert_eq!(s.after(10_000.0, 9_990.0, 3.0, 1.0), Next::Step(20_000.0));
        assert_eq!(s.best, Some((10_000.0, 9_990.0)));
    }

    #[test]
    fn a_slow_p99_stops_the_search_and_keeps_the_previous_best() {
        let mut s = search();
        s.after(10_000.0, 10_000.0, 3.0, 1.0);
        assert!(matches!(
            s.after(20_000.0, 19_000.0, 80.0, 1.0),
            Next::Stop(_)
        ));
        assert_eq!(s.best, Some((10_000.0, 10_000.0)));
    }

    #[test]
    fn lost_deliveries_stop_the_search_even_when_fast() {
        let mut s = search();
        assert!(matches!(
            s.after(10_000.0, 9_000.0, 1.0, 0.9),
            Next::Stop(_)
        ));
        assert_eq!(s.best, None);
    }

    #[test]
    fn the_search_never_offers_more_than_the_maximum() {
        let mut s = search();
        assert!(matches!(
            s.after(60_000.0, 60_000.0, 1.0, 1.0),
            Next::Stop(_)
        ));
        assert_eq!(s.best, Some((60_000.0, 60_000.0)));
    }
}
