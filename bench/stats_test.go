package bench

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// sample is one figure measured once per round, in the order of the rounds.
type sample []float64

// median returns the middle value, or the mean of the two middle values.
func (s sample) median() float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	sorted := slices.Clone(s)
	slices.Sort(sorted)
	mid := len(sorted) / 2
	if len(sorted)%2 == 1 {
		return sorted[mid]
	}
	return (sorted[mid-1] + sorted[mid]) / 2
}

// spread formats the median with the lowest and highest round, such as "1234 (1200–1300)".
func (s sample) spread(format string) string {
	if len(s) == 0 {
		return "n/a"
	}
	m := fmt.Sprintf(format, s.median())
	if len(s) == 1 {
		return m
	}
	return fmt.Sprintf("%s (%s–%s)", m, fmt.Sprintf(format, slices.Min(s)), fmt.Sprintf(format, slices.Max(s)))
}

// ratios divides s by base round by round, so that each ratio compares runs made next to
// each other in time.
func ratios(s, base sample) sample {
	out := make(sample, 0, len(s))
	for i := range min(len(s), len(base)) {
		if base[i] != 0 {
			out = append(out, s[i]/base[i])
		}
	}
	return out
}

// percentile returns the p-th percentile (0 < p <= 100) of durations by the nearest-rank
// method, in milliseconds.
func percentile(durations []time.Duration, p float64) float64 {
	if len(durations) == 0 {
		return math.NaN()
	}
	sorted := slices.Clone(durations)
	slices.Sort(sorted)
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return float64(sorted[rank-1]) / float64(time.Millisecond)
}

// verdict compares a ratio with its target: "met" or "missed".
func verdict(ratio, target float64, higherIsBetter bool) string {
	if math.IsNaN(ratio) {
		return "n/a"
	}
	if (higherIsBetter && ratio >= target) || (!higherIsBetter && ratio <= target) {
		return "met"
	}
	return "missed"
}
