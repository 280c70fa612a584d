package cloudapi

import (
	"slices"
	"strings"
	"testing"
)

func TestParseInstanceTypes(t *testing.T) {
	got, err := ParseInstanceTypes("small=512m, medium=1GiB,large=2g@t3.small")
	if err != nil {
		t.Fatal(err)
	}
	want := []InstanceType{
		{Name: "small", Memory: 512 << 20},
		{Name: "medium", Memory: 1 << 30},
		{Name: "large", Memory: 2 << 30, ProviderType: "t3.small"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	if s := got[2].String(); s != "large=2GiB@t3.small" {
		t.Errorf("String() = %q", s)
	}

	bad := map[string]string{
		"":                          "no instance types",
		"   ":                       "no instance types",
		"small=512XB":               `unknown unit "XB"`,
		"small=512MiB,small=1GiB":   `"small" defined twice`,
		"small=512MiB,,large=1GiB":  "empty entry",
		"small":                     "want name=size",
		"=1GiB":                     "invalid name",
		"sm all=1GiB":               "invalid name",
		"small=0":                   "at least one byte",
		"small=":                    "it is empty",
		"small=1GiB,medium=lots@m1": "write a number",
	}
	for in, want := range bad {
		_, err := ParseInstanceTypes(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseInstanceTypes(%q) error = %v; want it to mention %q", in, err, want)
		}
	}
}

func TestLabels(t *testing.T) {
	spec := Spec{Cluster: "prod", Name: "w-proxy-3f2a", Type: InstanceType{Name: "small"}, Tags: []string{"zone=a", "role=proxy"}}
	l, err := Labels(spec)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{TagCluster: "prod", TagNode: "w-proxy-3f2a", TagType: "small", TagTags: "zone=a,role=proxy", TagRole: "proxy"}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("label %s = %q, want %q", k, l[k], v)
		}
	}
	if len(l) != len(want) {
		t.Errorf("labels %v, want %v", l, want)
	}
	var inst Instance
	ApplyLabels(&inst, l)
	if inst.Cluster != "prod" || inst.Name != "w-proxy-3f2a" || inst.Type != "small" || !slices.Equal(inst.Tags, spec.Tags) {
		t.Errorf("ApplyLabels gave %+v", inst)
	}
	if err := spec.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}

	if _, err := Labels(Spec{Cluster: "c", Name: "n", Tags: []string{"a,b"}}); err == nil {
		t.Error("tag with comma accepted")
	}
	if _, err := Labels(Spec{Cluster: "c", Name: "n", Tags: []string{strings.Repeat("x", 300)}}); err == nil {
		t.Error("over-long tag accepted")
	}
	for _, s := range []Spec{{Name: "n", Type: InstanceType{Name: "t"}}, {Cluster: "c", Type: InstanceType{Name: "t"}}, {Cluster: "c", Name: "n"}} {
		if err := s.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted", s)
		}
	}
}

func TestApplyPrices(t *testing.T) {
	types, err := ParseInstanceTypes("small=512MiB,large=2GiB@t3.medium")
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplyPrices(types, "small=0.0104, large=0.0416"); err != nil {
		t.Fatal(err)
	}
	if types[0].Price != 0.0104 || types[1].Price != 0.0416 {
		t.Fatalf("prices %v %v", types[0].Price, types[1].Price)
	}
	for in, want := range map[string]string{
		"tiny=1":          `no instance type "tiny" (types: small, large)`,
		"small=cheap":     `"cheap" is not a price per hour`,
		"small=-1":        `"-1" is not a price per hour`,
		"small=1,small=2": `given twice`,
		"small":           `want NAME=PRICE`,
	} {
		if err := ApplyPrices(types, in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ApplyPrices(%q) = %v, want %q", in, err, want)
		}
	}
}
