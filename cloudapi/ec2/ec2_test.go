package ec2

import (
	"context"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"

	"github.com/micado-scale/micado/cloudapi"
)

// The tests talk only to fakeEC2 on 127.0.0.1. As a second line of defence
// every SDK client gets loopbackClient, whose dialer refuses anything else,
// and IMDS is disabled.

const (
	testRegion = "us-test-1"
	testKeyID  = "AKIDMICADOTEST"
	ec2NS      = "http://ec2.amazonaws.com/doc/2016-11-15/"
)

// loopbackDial refuses every address but 127.0.0.1.
func loopbackDial(t *testing.T) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil || host != "127.0.0.1" {
			t.Errorf("test tried to dial %s: only 127.0.0.1 is allowed", addr)
			return nil, fmt.Errorf("dial %s refused by test: loopback only", addr)
		}
		return d.DialContext(ctx, network, addr)
	}
}

// loopbackClient is an SDK HTTP client that can only reach 127.0.0.1 and
// ignores proxy settings.
func loopbackClient(t *testing.T) *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.Proxy = nil
		tr.DialContext = loopbackDial(t)
	})
}

// fakeInstance is one row of the fake's instance table.
type fakeInstance struct {
	id, imageID, itype, subnet, keyName, privateIP string
	state                                          string
	launched                                       time.Time
	tags                                           map[string]string
	userData                                       string
}

// fakeEC2 fakes the parts of the EC2 Query API the provider uses: form
// encoded POSTs answered in EC2's XML wire format, backed by an in-memory
// instance table. Instances go pending -> running and shutting-down ->
// terminated after they have been described once, like a slow cloud.
type fakeEC2 struct {
	t   *testing.T
	srv *httptest.Server

	mu        sync.Mutex
	instances []*fakeInstance
	nextID    int
	calls     []url.Values // every request's form, in order
	failRun   *apiErr      // if set, RunInstances answers with this error
	pageLimit int          // the most instances DescribeInstances returns per page
	described []*fakeInstance
}

type apiErr struct {
	status        int
	code, message string
}

func newFakeEC2(t *testing.T) *fakeEC2 {
	f := &fakeEC2{t: t, pageLimit: 2}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	if u, _ := url.Parse(f.srv.URL); u.Hostname() != "127.0.0.1" {
		t.Fatalf("fake listens on %s, want 127.0.0.1", u.Host)
	}
	return f
}

// seed adds an instance directly to the table.
func (f *fakeEC2) seed(state string, tags map[string]string) *fakeInstance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.add("ami-seed", "t3.micro", state, tags)
}

func (f *fakeEC2) add(image, itype, state string, tags map[string]string) *fakeInstance {
	f.nextID++
	in := &fakeInstance{
		id:        fmt.Sprintf("i-%017x", 0xabc000+f.nextID),
		imageID:   image,
		itype:     itype,
		state:     state,
		privateIP: fmt.Sprintf("10.0.0.%d", 10+f.nextID),
		launched:  time.Date(2025, 3, 1, 12, 0, f.nextID, 0, time.UTC),
		tags:      tags,
	}
	f.instances = append(f.instances, in)
	return in
}

// callsTo returns the forms of the requests for action.
func (f *fakeEC2) callsTo(action string) []url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []url.Values
	for _, c := range f.calls {
		if c.Get("Action") == action {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeEC2) fail(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors><RequestID>ea966190-f9aa-478e-9ede-example</RequestID></Response>`,
		xmlEscape(code), xmlEscape(msg))
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func (f *fakeEC2) reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	b, err := xml.MarshalIndent(v, "", "  ")
	if err != nil {
		f.t.Errorf("fake: marshal: %v", err)
	}
	_, _ = w.Write([]byte(xml.Header))
	_, _ = w.Write(b)
}

func (f *fakeEC2) serve(w http.ResponseWriter, r *http.Request) {
	// What every EC2 Query API request must look like.
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		f.t.Errorf("fake: got %s %s, want POST /", r.Method, r.URL.Path)
		f.fail(w, 400, "InvalidAction", "bad method or path")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		f.t.Errorf("fake: Content-Type %q, want form encoding", ct)
	}
	auth := r.Header.Get("Authorization")
	wantCred := "AWS4-HMAC-SHA256 Credential=" + testKeyID + "/"
	if !strings.HasPrefix(auth, wantCred) || !strings.Contains(auth, "/"+testRegion+"/ec2/aws4_request") {
		f.t.Errorf("fake: Authorization %q is not a SigV4 signature by %s for %s/ec2", auth, testKeyID, testRegion)
		f.fail(w, 401, "AuthFailure", "bad signature")
		return
	}
	if err := r.ParseForm(); err != nil {
		f.t.Errorf("fake: parse form: %v", err)
		f.fail(w, 400, "MalformedQueryString", err.Error())
		return
	}
	form := r.PostForm
	if v := form.Get("Version"); v != "2016-11-15" {
		f.t.Errorf("fake: Version %q, want 2016-11-15", v)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, form)
	switch a := form.Get("Action"); a {
	case "RunInstances":
		f.runInstances(w, form)
	case "TerminateInstances":
		f.terminateInstances(w, form)
	case "DescribeInstances":
		f.describeInstances(w, form)
	default:
		f.t.Errorf("fake: unexpected Action %q", a)
		f.fail(w, 400, "InvalidAction", "The action "+a+" is not valid for this web service.")
	}
}

// indexed collects prefix.1, prefix.2, ... until one is missing.
func indexed(form url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := form[prefix+"."+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

func (f *fakeEC2) runInstances(w http.ResponseWriter, form url.Values) {
	if f.failRun != nil {
		f.fail(w, f.failRun.status, f.failRun.code, f.failRun.message)
		return
	}
	for _, k := range []string{"MinCount", "MaxCount"} {
		if form.Get(k) != "1" {
			f.fail(w, 400, "InvalidParameterValue", k+" must be 1 in this fake")
			return
		}
	}
	if form.Get("ImageId") == "" || form.Get("InstanceType") == "" || form.Get("ClientToken") == "" {
		f.fail(w, 400, "MissingParameter", "ImageId, InstanceType and ClientToken are required by this fake")
		return
	}
	ud, err := base64.StdEncoding.DecodeString(form.Get("UserData"))
	if err != nil {
		f.fail(w, 400, "InvalidParameterValue", "Invalid BASE64 encoding of user data.")
		return
	}
	if form.Get("TagSpecification.1.ResourceType") != "instance" {
		f.fail(w, 400, "InvalidParameterValue", "TagSpecification.1.ResourceType must be instance")
		return
	}
	tags := map[string]string{}
	for i := 1; form.Has(fmt.Sprintf("TagSpecification.1.Tag.%d.Key", i)); i++ {
		tags[form.Get(fmt.Sprintf("TagSpecification.1.Tag.%d.Key", i))] = form.Get(fmt.Sprintf("TagSpecification.1.Tag.%d.Value", i))
	}
	in := f.add(form.Get("ImageId"), form.Get("InstanceType"), "pending", tags)
	in.subnet = form.Get("SubnetId")
	in.keyName = form.Get("KeyName")
	in.userData = string(ud)
	f.reply(w, runInstancesResponse{
		Xmlns:         ec2NS,
		RequestID:     "req-run",
		ReservationID: "r-0123456789abcdef0",
		OwnerID:       "123456789012",
		Instances:     []xmlInstance{in.xml()},
	})
}

func (f *fakeEC2) terminateInstances(w http.ResponseWriter, form url.Values) {
	ids := indexed(form, "InstanceId")
	var items []xmlStateChange
	for _, id := range ids {
		i := slices.IndexFunc(f.instances, func(in *fakeInstance) bool { return in.id == id })
		if !strings.HasPrefix(id, "i-") {
			f.fail(w, 400, "InvalidInstanceID.Malformed", fmt.Sprintf("Invalid id: %q", id))
			return
		}
		if i < 0 {
			f.fail(w, 400, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id))
			return
		}
		in := f.instances[i]
		prev := in.state
		if in.state != "terminated" {
			in.state = "shutting-down"
		}
		items = append(items, xmlStateChange{InstanceID: id, Current: stateOf(in.state), Previous: stateOf(prev)})
	}
	f.reply(w, terminateInstancesResponse{Xmlns: ec2NS, RequestID: "req-term", Instances: items})
}

func (f *fakeEC2) describeInstances(w http.ResponseWriter, form url.Values) {
	type filter struct {
		name   string
		values []string
	}
	var filters []filter
	for i := 1; form.Has(fmt.Sprintf("Filter.%d.Name", i)); i++ {
		filters = append(filters, filter{form.Get(fmt.Sprintf("Filter.%d.Name", i)), indexed(form, fmt.Sprintf("Filter.%d.Value", i))})
	}
	match := func(in *fakeInstance) bool {
		for _, fl := range filters {
			var v string
			switch {
			case fl.name == "instance-state-name":
				v = in.state
			case strings.HasPrefix(fl.name, "tag:"):
				var ok bool
				if v, ok = in.tags[strings.TrimPrefix(fl.name, "tag:")]; !ok {
					return false
				}
			default:
				f.t.Errorf("fake: unsupported filter %q", fl.name)
				return false
			}
			if !slices.Contains(fl.values, v) {
				return false
			}
		}
		return true
	}
	var matched []*fakeInstance
	for _, in := range f.instances {
		if match(in) {
			matched = append(matched, in)
		}
	}
	start := 0
	if tok := form.Get("NextToken"); tok != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(tok, "tok-"))
		if err != nil || n > len(matched) {
			f.fail(w, 400, "InvalidParameterValue", "bad NextToken")
			return
		}
		start = n
	}
	end := len(matched)
	if mr := form.Get("MaxResults"); mr != "" {
		n, err := strconv.Atoi(mr)
		if err != nil || n < 5 || n > 1000 {
			f.fail(w, 400, "InvalidParameterValue", "MaxResults must be between 5 and 1000")
			return
		}
		end = min(end, start+min(n, f.pageLimit))
	}
	resp := describeInstancesResponse{Xmlns: ec2NS, RequestID: "req-describe"}
	for _, in := range matched[start:end] {
		resp.Reservations = append(resp.Reservations, xmlReservation{
			ReservationID: "r-" + in.id[2:],
			OwnerID:       "123456789012",
			Instances:     []xmlInstance{in.xml()},
		})
	}
	if end < len(matched) {
		resp.NextToken = "tok-" + strconv.Itoa(end)
	}
	f.reply(w, resp)
	// Time passes: the cloud makes progress once a listing has been read to
	// its last page (not between pages, which would shift the NextToken
	// offsets).
	f.described = append(f.described, matched[start:end]...)
	if end == len(matched) {
		for _, in := range f.described {
			switch in.state {
			case "pending":
				in.state = "running"
			case "shutting-down":
				in.state = "terminated"
			}
		}
		f.described = nil
	}
}

// EC2 XML wire format.

type xmlState struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

func stateOf(name string) xmlState {
	codes := map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}
	return xmlState{Code: codes[name], Name: name}
}

type xmlTag struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type xmlInstance struct {
	InstanceID     string   `xml:"instanceId"`
	ImageID        string   `xml:"imageId"`
	State          xmlState `xml:"instanceState"`
	PrivateDNSName string   `xml:"privateDnsName"`
	KeyName        string   `xml:"keyName,omitempty"`
	AmiLaunchIndex int      `xml:"amiLaunchIndex"`
	InstanceType   string   `xml:"instanceType"`
	LaunchTime     string   `xml:"launchTime"`
	SubnetID       string   `xml:"subnetId,omitempty"`
	PrivateIP      string   `xml:"privateIpAddress"`
	Tags           []xmlTag `xml:"tagSet>item"`
}

func (in *fakeInstance) xml() xmlInstance {
	x := xmlInstance{
		InstanceID:     in.id,
		ImageID:        in.imageID,
		State:          stateOf(in.state),
		PrivateDNSName: "ip-" + strings.ReplaceAll(in.privateIP, ".", "-") + ".ec2.internal",
		KeyName:        in.keyName,
		InstanceType:   in.itype,
		LaunchTime:     in.launched.Format("2006-01-02T15:04:05.000Z"),
		SubnetID:       in.subnet,
		PrivateIP:      in.privateIP,
	}
	for _, k := range slices.Sorted(maps.Keys(in.tags)) {
		x.Tags = append(x.Tags, xmlTag{k, in.tags[k]})
	}
	return x
}

type runInstancesResponse struct {
	XMLName       xml.Name      `xml:"RunInstancesResponse"`
	Xmlns         string        `xml:"xmlns,attr"`
	RequestID     string        `xml:"requestId"`
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

type xmlReservation struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []xmlInstance `xml:"instancesSet>item"`
}

type describeInstancesResponse struct {
	XMLName      xml.Name         `xml:"DescribeInstancesResponse"`
	Xmlns        string           `xml:"xmlns,attr"`
	RequestID    string           `xml:"requestId"`
	Reservations []xmlReservation `xml:"reservationSet>item"`
	NextToken    string           `xml:"nextToken,omitempty"`
}

type xmlStateChange struct {
	InstanceID string   `xml:"instanceId"`
	Current    xmlState `xml:"currentState"`
	Previous   xmlState `xml:"previousState"`
}

type terminateInstancesResponse struct {
	XMLName   xml.Name         `xml:"TerminateInstancesResponse"`
	Xmlns     string           `xml:"xmlns,attr"`
	RequestID string           `xml:"requestId"`
	Instances []xmlStateChange `xml:"instancesSet>item"`
}

// Tests.

var testConfig = Config{
	Region:           testRegion,
	AMI:              "ami-0micado00000001",
	Types:            map[string]string{"small": "t3.small", "large": "m5.large"},
	SubnetID:         "subnet-0abc",
	SecurityGroupIDs: []string{"sg-0001", "sg-0002"},
	KeyName:          "micado-admin",
}

// newTestProvider builds a provider talking to f with a hand-made
// aws.Config: static fake credentials, loopback-only HTTP, no retries.
func newTestProvider(t *testing.T, f *fakeEC2) *Provider {
	t.Helper()
	cfg := testConfig
	cfg.Endpoint = f.srv.URL
	p, err := New(context.Background(), cfg,
		WithAWSConfig(aws.Config{
			Region: testRegion,
			Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
				return aws.Credentials{AccessKeyID: testKeyID, SecretAccessKey: "fake-secret", Source: "test"}, nil
			}),
			HTTPClient: loopbackClient(t),
		}),
		WithClientOptions(func(o *ec2.Options) { o.RetryMaxAttempts = 1 }),
	)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func userData(t *testing.T, name string) string {
	t.Helper()
	ud, err := cloudapi.RenderUserData(cloudapi.TestUserDataParams(name))
	if err != nil {
		t.Fatal(err)
	}
	return ud
}

func TestCreateListTerminate(t *testing.T) {
	f := newFakeEC2(t)
	// Machines that List must not return: another cluster's, a stranger's,
	// and a terminated one of ours.
	f.seed("running", map[string]string{cloudapi.TagCluster: "staging", "Name": "w-other"})
	f.seed("running", map[string]string{"Name": "bastion"})
	f.seed("terminated", map[string]string{cloudapi.TagCluster: "prod", "Name": "w-old"})
	p := newTestProvider(t, f)
	ctx := context.Background()

	ud := userData(t, "w-proxy-3f2a")
	spec := cloudapi.Spec{
		Cluster:  "prod",
		Name:     "w-proxy-3f2a",
		Type:     cloudapi.InstanceType{Name: "small", Memory: 2 << 30},
		Tags:     []string{"role=proxy", "zone=a"},
		UserData: ud,
	}
	inst, err := p.Create(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(inst.ID, "i-") || inst.Name != "w-proxy-3f2a" || inst.Cluster != "prod" || inst.Type != "small" ||
		inst.State != cloudapi.StatePending || inst.Address == "" || inst.CreatedAt.IsZero() || !slices.Equal(inst.Tags, spec.Tags) {
		t.Errorf("Create returned %+v", inst)
	}

	// What the SDK really sent.
	runs := f.callsTo("RunInstances")
	if len(runs) != 1 {
		t.Fatalf("%d RunInstances calls, want 1", len(runs))
	}
	run := runs[0]
	for k, want := range map[string]string{
		"ImageId":                         "ami-0micado00000001",
		"InstanceType":                    "t3.small",
		"MinCount":                        "1",
		"MaxCount":                        "1",
		"SubnetId":                        "subnet-0abc",
		"SecurityGroupId.1":               "sg-0001",
		"SecurityGroupId.2":               "sg-0002",
		"KeyName":                         "micado-admin",
		"TagSpecification.1.ResourceType": "instance",
		"TagSpecification.1.Tag.1.Key":    "Name",
		"TagSpecification.1.Tag.1.Value":  "w-proxy-3f2a",
		"TagSpecification.1.Tag.2.Key":    cloudapi.TagCluster,
		"TagSpecification.1.Tag.2.Value":  "prod",
		"TagSpecification.1.Tag.3.Key":    cloudapi.TagNode,
		"TagSpecification.1.Tag.3.Value":  "w-proxy-3f2a",
		"TagSpecification.1.Tag.4.Key":    cloudapi.TagRole,
		"TagSpecification.1.Tag.4.Value":  "proxy",
		"TagSpecification.1.Tag.5.Key":    cloudapi.TagTags,
		"TagSpecification.1.Tag.5.Value":  "role=proxy,zone=a",
		"TagSpecification.1.Tag.6.Key":    cloudapi.TagType,
		"TagSpecification.1.Tag.6.Value":  "small",
		"TagSpecification.1.Tag.7.Key":    "", // nothing else
		"TagSpecification.2.ResourceType": "",
		"SecurityGroupId.3":               "",
	} {
		if got := run.Get(k); got != want {
			t.Errorf("RunInstances %s = %q, want %q", k, got, want)
		}
	}
	if run.Get("ClientToken") == "" {
		t.Error("RunInstances sent no ClientToken: SDK retries could launch twice")
	}
	gotUD, err := base64.StdEncoding.DecodeString(run.Get("UserData"))
	if err != nil || string(gotUD) != ud {
		t.Errorf("UserData decodes to %q, %v; want the rendered cloud-config", gotUD, err)
	}
	// The instance's metadata service hands user data to any process on
	// it: what reached EC2 holds the join token, never the cluster key.
	if tok, err := cloudapi.JoinTokenOf(string(gotUD)); err != nil || tok != cloudapi.TestUserDataParams("").JoinToken {
		t.Errorf("UserData sent to EC2: join token %q, %v", tok, err)
	}

	// Two more, so listing needs several pages of two.
	for _, n := range []string{"w-proxy-aaaa", "w-db-bbbb"} {
		s := spec
		s.Name, s.Tags, s.Type = n, nil, cloudapi.InstanceType{Name: "big", ProviderType: "m5.xlarge"}
		if _, err := p.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.callsTo("RunInstances")[2].Get("InstanceType"); got != "m5.xlarge" {
		t.Errorf("ProviderType not used: InstanceType %q", got)
	}

	list := func() map[string]cloudapi.Instance {
		t.Helper()
		before := len(f.callsTo("DescribeInstances"))
		insts, err := p.List(ctx, "prod")
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]cloudapi.Instance{}
		for _, in := range insts {
			if in.Cluster != "prod" {
				t.Errorf("List returned another cluster's instance %+v", in)
			}
			byName[in.Name] = in
		}
		if len(byName) != len(insts) {
			t.Errorf("List returned duplicates: %+v", insts)
		}
		// Check the filters and pagination of the calls just made.
		calls := f.callsTo("DescribeInstances")[before:]
		for i, c := range calls {
			if c.Get("Filter.1.Name") != "tag:micado-cluster" || c.Get("Filter.1.Value.1") != "prod" || c.Has("Filter.1.Value.2") {
				t.Errorf("DescribeInstances filter 1 = %s=%q", c.Get("Filter.1.Name"), indexed(c, "Filter.1.Value"))
			}
			states := indexed(c, "Filter.2.Value")
			slices.Sort(states)
			if c.Get("Filter.2.Name") != "instance-state-name" || !slices.Equal(states, []string{"pending", "running", "shutting-down", "stopped", "stopping"}) {
				t.Errorf("DescribeInstances filter 2 = %s=%q", c.Get("Filter.2.Name"), states)
			}
			if (i == 0) != (c.Get("NextToken") == "") {
				t.Errorf("DescribeInstances call %d NextToken = %q", i, c.Get("NextToken"))
			}
		}
		if want := max(1, (len(insts)+1)/2); len(calls) != want {
			t.Errorf("%d instances took %d DescribeInstances calls, want %d pages", len(insts), len(calls), want)
		}
		return byName
	}

	got := list()
	if len(got) != 3 {
		t.Fatalf("List = %v, want the 3 created instances", got)
	}
	w := got["w-proxy-3f2a"]
	if w.ID != inst.ID || w.State != cloudapi.StatePending || w.Type != "small" || w.Address != inst.Address ||
		!w.CreatedAt.Equal(inst.CreatedAt) || !slices.Equal(w.Tags, []string{"role=proxy", "zone=a"}) {
		t.Errorf("listed %+v, created %+v", w, inst)
	}
	if got["w-db-bbbb"].Type != "big" {
		t.Errorf("type of w-db-bbbb = %q, want big", got["w-db-bbbb"].Type)
	}
	if got := list(); got["w-proxy-3f2a"].State != cloudapi.StateRunning {
		t.Errorf("second List state %q, want running", got["w-proxy-3f2a"].State)
	}

	if err := p.Terminate(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	if ids := indexed(f.callsTo("TerminateInstances")[0], "InstanceId"); !slices.Equal(ids, []string{inst.ID}) {
		t.Errorf("TerminateInstances InstanceId = %q", ids)
	}
	got = list()
	if len(got) != 3 || got["w-proxy-3f2a"].State != cloudapi.StateShuttingDown {
		t.Errorf("List after Terminate = %+v, want w-proxy-3f2a shutting-down", got)
	}
	got = list()
	if _, ok := got["w-proxy-3f2a"]; ok || len(got) != 2 {
		t.Errorf("List after termination = %+v, want the 2 others", got)
	}

	// Terminating again is fine (EC2 keeps terminated instances visible);
	// an unknown id is ErrNotFound.
	if err := p.Terminate(ctx, inst.ID); err != nil {
		t.Errorf("second Terminate: %v", err)
	}
	err = p.Terminate(ctx, "i-0000000000000dead")
	if !errors.Is(err, cloudapi.ErrNotFound) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("Terminate(unknown) = %v, want ErrNotFound with EC2's message", err)
	}
	if err := p.Terminate(ctx, "bogus"); !errors.Is(err, cloudapi.ErrNotFound) {
		t.Errorf("Terminate(malformed) = %v, want ErrNotFound", err)
	}
}

func TestListEmpty(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	insts, err := p.List(context.Background(), "nobody")
	if err != nil || len(insts) != 0 {
		t.Errorf("List = %v, %v; want nothing", insts, err)
	}
	if _, err := p.List(context.Background(), ""); err == nil {
		t.Error("List(\"\") accepted")
	}
}

func TestCreateInsufficientCapacity(t *testing.T) {
	f := newFakeEC2(t)
	f.failRun = &apiErr{500, "InsufficientInstanceCapacity", "We currently do not have sufficient t3.small capacity in the Availability Zone you requested (us-test-1a)."}
	p := newTestProvider(t, f)
	_, err := p.Create(context.Background(), cloudapi.Spec{Cluster: "prod", Name: "w-1", Type: cloudapi.InstanceType{Name: "small"}})
	if err == nil {
		t.Fatal("Create succeeded")
	}
	t.Logf("error: %v", err)
	if !errors.Is(err, cloudapi.ErrCapacity) {
		t.Errorf("error does not wrap ErrCapacity: %v", err)
	}
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "InsufficientInstanceCapacity" || !strings.Contains(ae.ErrorMessage(), "sufficient t3.small capacity") {
		t.Errorf("error does not carry EC2's code and message: %v", err)
	}
	for _, want := range []string{"w-1", "t3.small", "InsufficientInstanceCapacity", "RunInstances"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if n := len(f.callsTo("RunInstances")); n != 1 {
		t.Errorf("%d RunInstances calls, want 1", n)
	}

	// Other errors are reported but are not capacity errors.
	f.failRun = &apiErr{400, "InvalidAMIID.NotFound", "The image id '[ami-0micado00000001]' does not exist"}
	_, err = p.Create(context.Background(), cloudapi.Spec{Cluster: "prod", Name: "w-2", Type: cloudapi.InstanceType{Name: "small"}})
	if err == nil || errors.Is(err, cloudapi.ErrCapacity) || !strings.Contains(err.Error(), "InvalidAMIID.NotFound") {
		t.Errorf("Create with bad AMI = %v", err)
	}
}

func TestCreateUnknownType(t *testing.T) {
	f := newFakeEC2(t)
	p := newTestProvider(t, f)
	_, err := p.Create(context.Background(), cloudapi.Spec{Cluster: "prod", Name: "w-1", Type: cloudapi.InstanceType{Name: "huge"}})
	if err == nil || !strings.Contains(err.Error(), `"huge"`) {
		t.Errorf("Create(huge) = %v", err)
	}
	if n := len(f.callsTo("RunInstances")); n != 0 {
		t.Errorf("%d RunInstances calls for an unmapped type", n)
	}
}

// TestDefaultConfigChain builds the provider the production way, through
// config.LoadDefaultConfig, with the environment pinned to fake credentials,
// empty shared files and IMDS disabled.
func TestDefaultConfigChain(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":                      testKeyID,
		"AWS_SECRET_ACCESS_KEY":                  "fake-secret",
		"AWS_SESSION_TOKEN":                      "",
		"AWS_PROFILE":                            "",
		"AWS_DEFAULT_PROFILE":                    "",
		"AWS_REGION":                             "",
		"AWS_DEFAULT_REGION":                     "",
		"AWS_CONFIG_FILE":                        empty,
		"AWS_SHARED_CREDENTIALS_FILE":            empty,
		"AWS_EC2_METADATA_DISABLED":              "true",
		"AWS_ENDPOINT_URL":                       "",
		"AWS_ENDPOINT_URL_EC2":                   "",
		"AWS_WEB_IDENTITY_TOKEN_FILE":            "",
		"AWS_ROLE_ARN":                           "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI":     "",
		"HTTPS_PROXY":                            "",
		"HTTP_PROXY":                             "",
	} {
		t.Setenv(k, v)
	}
	f := newFakeEC2(t)
	cfg := testConfig
	cfg.Endpoint = f.srv.URL

	if _, err := New(context.Background(), Config{AMI: "ami-1"}, WithLoadOptions(config.WithHTTPClient(loopbackClient(t)))); err == nil || !strings.Contains(err.Error(), "region") {
		t.Errorf("New without region = %v, want a region error", err)
	}
	if _, err := New(context.Background(), Config{Region: testRegion}); err == nil {
		t.Error("New without AMI accepted")
	}

	p, err := New(context.Background(), cfg, WithLoadOptions(config.WithHTTPClient(loopbackClient(t))))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != "ec2" {
		t.Errorf("Name() = %q", p.Name())
	}
	inst, err := p.Create(context.Background(), cloudapi.Spec{Cluster: "prod", Name: "w-1", Type: cloudapi.InstanceType{Name: "large"}})
	if err != nil {
		t.Fatal(err)
	}
	insts, err := p.List(context.Background(), "prod")
	if err != nil || len(insts) != 1 || insts[0].ID != inst.ID || insts[0].Type != "large" {
		t.Errorf("List = %+v, %v", insts, err)
	}
	if got := f.callsTo("RunInstances")[0]; got.Get("InstanceType") != "m5.large" || got.Has("UserData") {
		t.Errorf("RunInstances InstanceType=%q UserData=%q", got.Get("InstanceType"), got.Get("UserData"))
	}
}
