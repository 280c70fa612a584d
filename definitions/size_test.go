package definitions

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"64MiB": 64 << 20, "64mib": 64 << 20, "1GiB": 1 << 30, "1.5GiB": 3 << 29,
		"512m": 512 << 20, "2g": 2 << 30, "100": 100, "100B": 100, "1KB": 1000,
		"1MB": 1000000, " 8 MiB ": 8 << 20, "1TiB": 1 << 40,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "12XB", "MiB", "-5MiB", "0", "1..2GiB", "0.1B", "99999999999TiB", "1 2MiB"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted a bad size", in)
		}
	}
}

func TestFormatSizeRoundTrip(t *testing.T) {
	for _, n := range []int64{1, 1023, 1 << 10, 64 << 20, 3 << 29, 1 << 30, 5 << 40} {
		s := FormatSize(n)
		got, err := ParseSize(s)
		if err != nil || got != n {
			t.Errorf("FormatSize(%d) = %q, which parses to %d, %v", n, s, got, err)
		}
	}
}
