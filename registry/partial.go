package registry

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
)

// identityFields are the fields of a service configuration that identify its users'
// sessions and its routes: another value of any of them would end every session (another
// cookie or header) or send its users elsewhere (other domains or path). A rejected
// configuration is served only when all of them are valid; any other bad field takes its
// default.
var identityFields = []string{"domains", "pathPrefix", "affinity", "affinity.mode", "affinity.cookieName", "affinity.headerName"}

// PartialConfig is what DecodeServiceConfigPartial makes of a service configuration.
type PartialConfig struct {
	// Config is the configuration to serve when Identity is nil: the value's own fields,
	// its bad optional fields at their defaults.
	Config ServiceConfig
	// Defaulted lists the optional fields that failed decoding or validation and were
	// replaced by their defaults, each "field: why".
	Defaulted []string
	// Identity says why the fields that identify the service's sessions and routes are bad;
	// nil when Config can be served.
	Identity error
	// Domains and PathPrefix are the routes the value claims, when both are valid (even if
	// its affinity is not): what a service left out keeps reserved. Domains is nil when they
	// cannot be known (the value is not a JSON object, or its domains or path are bad).
	Domains    []string
	PathPrefix string
}

// DecodeServiceConfigPartial decodes the value of <prefix>/services/<service> as far as it
// can: each field alone, a field that fails decoding or validation taking its default. A
// value that DecodeServiceConfig accepts gives its configuration with nothing defaulted. It
// is a pure function of the value, so every replica and every restart makes the same of it.
func DecodeServiceConfigPartial(service string, raw []byte) PartialConfig {
	cfg, err := DecodeServiceConfig(service, raw)
	if err == nil {
		return PartialConfig{Config: cfg, Domains: cfg.Domains, PathPrefix: cfg.PathPrefix}
	}
	if err := ValidateServiceName(service); err != nil {
		return PartialConfig{Identity: err}
	}
	var top map[string]json.RawMessage
	if err := decodeJSON(raw, &top); err != nil {
		return PartialConfig{Identity: err}
	}
	def := DefaultServiceConfig(service)
	cfg = DefaultServiceConfig(service)
	bad := map[string]string{} // field -> why, first reason only
	var order []string
	note := func(field, why string) {
		if _, seen := bad[field]; !seen {
			order = append(order, field)
		}
		bad[field] = why
	}
	decodeFields(reflect.ValueOf(&cfg).Elem(), top, "", note)
	if cfg.Affinity.HeaderName == "" {
		cfg.Affinity.HeaderName = def.Affinity.HeaderName
	}
	for _, f := range order {
		resetField(&cfg, &def, f)
	}
	// Validate, resetting each field it names, until valid: a reset can only make a field
	// valid, so this ends within the number of fields; the bound is a guard.
	for range 64 {
		verr := cfg.Validate()
		if verr == nil {
			break
		}
		for _, e := range joined(verr) {
			f := fieldOf(e)
			if f == "" {
				return PartialConfig{Identity: verr}
			}
			note(f, e.Error())
			resetField(&cfg, &def, f)
		}
	}
	p := PartialConfig{Config: cfg}
	var idErrs []error
	routesBad := false
	for _, f := range order {
		why := bad[f]
		if !strings.HasPrefix(why, f+":") {
			why = f + ": " + why
		}
		if slices.Contains(identityFields, f) {
			idErrs = append(idErrs, errors.New(why))
			routesBad = routesBad || f == "domains" || f == "pathPrefix"
			continue
		}
		p.Defaulted = append(p.Defaulted, why)
	}
	p.Identity = errors.Join(idErrs...)
	if !routesBad {
		p.Domains, p.PathPrefix = cfg.Domains, cfg.PathPrefix
	}
	if p.Identity != nil {
		p.Config = ServiceConfig{}
	}
	return p
}

// decodeFields decodes each JSON field of raw into the struct v alone, recursing into
// nested objects; note receives each field that fails, by its JSON path. Field names are
// matched as encoding/json matches them (exactly, else case-insensitively); unknown ones
// are ignored.
func decodeFields(v reflect.Value, raw map[string]json.RawMessage, path string, note func(field, why string)) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "" || name == "-" || !sf.IsExported() {
			continue
		}
		val, ok := raw[name]
		if !ok {
			for k, rv := range raw {
				if strings.EqualFold(k, name) {
					val, ok = rv, true
				}
			}
		}
		if !ok {
			continue
		}
		field := path + name
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct && !reflect.PointerTo(fv.Type()).Implements(reflect.TypeFor[json.Unmarshaler]()) {
			var sub map[string]json.RawMessage
			if err := json.Unmarshal(val, &sub); err != nil {
				note(field, "must be a JSON object")
				continue
			}
			if sub != nil { // null leaves the defaults
				decodeFields(fv, sub, field+".", note)
			}
			continue
		}
		tmp := reflect.New(fv.Type())
		tmp.Elem().Set(fv)
		if err := json.Unmarshal(val, tmp.Interface()); err != nil {
			note(field, err.Error())
			continue
		}
		fv.Set(tmp.Elem())
	}
}

// resetField sets the field at JSON path field of cfg to its value in def.
func resetField(cfg, def *ServiceConfig, field string) {
	dst, src := reflect.ValueOf(cfg).Elem(), reflect.ValueOf(def).Elem()
	for _, part := range strings.Split(field, ".") {
		i := jsonFieldIndex(dst.Type(), part)
		if i < 0 {
			return
		}
		dst, src = dst.Field(i), src.Field(i)
	}
	dst.Set(reflect.ValueOf(clone(src.Interface())))
}

// clone copies slices so that a reset field shares nothing with the defaults.
func clone(v any) any {
	switch x := v.(type) {
	case []string:
		return slices.Clone(x)
	case []int:
		return slices.Clone(x)
	}
	return v
}

func jsonFieldIndex(t reflect.Type, name string) int {
	if t.Kind() != reflect.Struct {
		return -1
	}
	for i := range t.NumField() {
		if n, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); n == name {
			return i
		}
	}
	return -1
}

// fieldOf returns the JSON path a validation error of ServiceConfig.Validate names (its
// messages start with "path: "), or "" when it names no known field.
func fieldOf(err error) string {
	f, _, ok := strings.Cut(err.Error(), ":")
	if !ok {
		return ""
	}
	t := reflect.TypeFor[ServiceConfig]()
	for _, part := range strings.Split(f, ".") {
		i := jsonFieldIndex(t, part)
		if i < 0 {
			return ""
		}
		t = t.Field(i).Type
	}
	return f
}
