package vlan

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Rate is a link rate in bits per second. Its JSON form is either a number
// (bits per second) or a string with tc's units: "10mbit", "1gbit",
// "500kbit", "100mbps" (bytes per second), "2.5gbit".
type Rate uint64

// rateUnits maps a unit suffix to bits per second. Like tc, "k", "m" and
// "g" are powers of 1000, and the "bps" family counts bytes.
var rateUnits = []struct {
	suffix string
	mult   float64
}{
	// Longest suffixes first so "kbit" is not read as "bit".
	{"kibit", 1024}, {"mibit", 1024 * 1024}, {"gibit", 1024 * 1024 * 1024},
	{"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}, {"tbit", 1e12},
	{"kbps", 8e3}, {"mbps", 8e6}, {"gbps", 8e9},
	{"bit", 1}, {"bps", 8},
}

// ParseRate parses a rate such as "10mbit" into bits per second.
func ParseRate(s string) (Rate, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" {
		return 0, fmt.Errorf("rate %q: empty", s)
	}
	mult := 1.0
	for _, u := range rateUnits {
		if strings.HasSuffix(t, u.suffix) {
			mult = u.mult
			t = strings.TrimSuffix(t, u.suffix)
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("rate %q: not a number with a unit like 10mbit", s)
	}
	bits := v * mult
	if bits < 1 || bits >= math.MaxUint64/2 {
		return 0, fmt.Errorf("rate %q: out of range", s)
	}
	return Rate(bits), nil
}

// String formats r with the largest tc unit that keeps it whole.
func (r Rate) String() string {
	switch {
	case r == 0:
		return "0bit"
	case r%1e9 == 0:
		return fmt.Sprintf("%dgbit", r/1e9)
	case r%1e6 == 0:
		return fmt.Sprintf("%dmbit", r/1e6)
	case r%1e3 == 0:
		return fmt.Sprintf("%dkbit", r/1e3)
	}
	return fmt.Sprintf("%dbit", uint64(r))
}

// BytesPerSecond is the rate as tc's tbf counts it.
func (r Rate) BytesPerSecond() uint64 { return uint64(r) / 8 }

// MarshalJSON writes the rate as a string with a unit.
func (r Rate) MarshalJSON() ([]byte, error) { return json.Marshal(r.String()) }

// UnmarshalJSON accepts a number of bits per second or a string with a unit.
func (r *Rate) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := ParseRate(s)
		if err != nil {
			return err
		}
		*r = v
		return nil
	}
	var n float64
	if err := json.Unmarshal(b, &n); err != nil {
		return errors.New("rate: want a number of bits per second or a string like \"10mbit\"")
	}
	if n < 1 || n >= math.MaxUint64/2 || n != math.Trunc(n) {
		return fmt.Errorf("rate %v: want a whole number of bits per second", n)
	}
	*r = Rate(n)
	return nil
}
