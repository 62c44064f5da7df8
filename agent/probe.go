package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	neturl "net/url"
	"strconv"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// maxBodyBytes bounds the part of a sessions or metrics answer that is read.
const maxBodyBytes = 8 << 20

// prober makes the agent's HTTP requests to its backend.
type prober struct {
	client *http.Client
}

// get fetches url and returns the status and up to maxBodyBytes of the body. Errors show
// the URL without its query, fragment or password (tokens), as reasons are published.
func (p *prober) get(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: bad URL", redactURL(url))
	}
	resp, err := p.client.Do(req)
	if err != nil {
		var ue *neturl.Error
		if errors.As(err, &ue) {
			ue.URL = redactURL(ue.URL) // a redirect may have led elsewhere
		}
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyBytes))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read %s: %w", redactURL(url), err)
	}
	return resp.StatusCode, body, nil
}

// check succeeds on a 2xx answer (Wisej's healthcheck.wx answers 202).
func (p *prober) check(ctx context.Context, url string) error {
	status, _, err := p.get(ctx, url)
	if err != nil {
		return err
	}
	if status < 200 || status > 299 {
		return fmt.Errorf("status %d", status)
	}
	return nil
}

// sessions reads the session count: {"sessions": N}, or with metric set, the sum of that
// metric's samples in Prometheus text format.
func (p *prober) sessions(ctx context.Context, url, metric string) (int, error) {
	status, body, err := p.get(ctx, url)
	if err != nil {
		return 0, err
	}
	if status < 200 || status > 299 {
		return 0, fmt.Errorf("%s: status %d", redactURL(url), status)
	}
	if metric != "" {
		return parseSessionsMetric(body, metric)
	}
	var v struct {
		Sessions *float64 `json:"sessions"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 0, fmt.Errorf("%s: want JSON {\"sessions\": N} (or set --sessions-metric for Prometheus text): %w", redactURL(url), err)
	}
	if v.Sessions == nil {
		return 0, fmt.Errorf("%s: the JSON has no \"sessions\" field", redactURL(url))
	}
	return toCount(*v.Sessions)
}

// parseSessionsMetric sums the samples of one metric family in Prometheus text format.
func parseSessionsMetric(body []byte, metric string) (int, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("parse Prometheus text: %w", err)
	}
	mf, ok := families[metric]
	if !ok {
		return 0, fmt.Errorf("metric %q not found in the answer", metric)
	}
	var sum float64
	for _, m := range mf.GetMetric() {
		switch {
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		default:
			return 0, fmt.Errorf("metric %q is a %s, not a gauge, counter or untyped", metric, mf.GetType())
		}
	}
	return toCount(sum)
}

func toCount(v float64) (int, error) {
	if math.IsNaN(v) || v < 0 || v > 1e9 {
		return 0, errors.New("session count " + strconv.FormatFloat(v, 'g', -1, 64) + " is not a count between 0 and 1e9")
	}
	return int(math.Round(v)), nil
}

// redactURL drops what may hold a secret from a URL: the query, the fragment and a password.
func redactURL(raw string) string {
	u, err := neturl.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = "", false, "", ""
	if u.User != nil {
		u.User = neturl.User(u.User.Username())
	}
	return u.String()
}
