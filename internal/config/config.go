// Package config resolves command options from flags, environment, a YAML file and defaults.
//
// It is the only package that touches viper. Each command describes its options as a typed
// struct whose fields carry `mapstructure` tags equal to the flag names; Resolve fills it with
// precedence flag > environment (LORACTL_<KEY>) > config file > flag default. Keys in the file
// that no option knows are an error that names the file and the key, so a typo never passes
// silently. String values may refer to environment variables as ${NAME}.
package config

import (
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvPrefix is the prefix of environment variables that override options (LORACTL_TEMPERATURE=0.5).
const EnvPrefix = "LORACTL"

// Resolve fills out (a pointer to a struct with mapstructure tags) from the flags in fs, the
// environment and, if file is not empty, the YAML file at that path.
func Resolve(fs *pflag.FlagSet, file string, out any) error {
	v := viper.New()
	v.SetEnvPrefix(EnvPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer("-", "_", ".", "_"))
	v.AutomaticEnv()

	known := keysOf(out)
	fs.VisitAll(func(f *pflag.Flag) {
		if known[f.Name] {
			_ = v.BindPFlag(f.Name, f) // cannot fail for a non-nil flag
		}
	})
	if file != "" {
		if _, err := os.Stat(file); err != nil {
			return fmt.Errorf("config file %s: %w", file, err)
		}
		v.SetConfigFile(file)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return fmt.Errorf("config file %s: %v (fix the YAML syntax)", file, err)
		}
		if err := checkKeys(file, v, known); err != nil {
			return err
		}
	}
	for k := range known {
		// AutomaticEnv only answers for keys viper already knows; make every option known.
		_ = v.BindEnv(k)
	}
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:           out,
		WeaklyTypedInput: true,
	})
	if err != nil {
		return err
	}
	settings := map[string]any{}
	for k := range known {
		val := v.Get(k)
		if str, ok := val.(string); ok && file != "" && v.InConfig(k) && !isOverridden(fs, k) {
			val = ExpandEnv(str)
		}
		settings[k] = val
	}
	if err := dec.Decode(settings); err != nil {
		where := "flags/environment"
		if file != "" {
			where = file
		}
		return fmt.Errorf("%s: %v", where, err)
	}
	return nil
}

// checkKeys reports keys in the config file that are not options.
func checkKeys(file string, v *viper.Viper, known map[string]bool) error {
	var unknown []string
	for _, k := range v.AllKeys() {
		if v.InConfig(k) && !known[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	sort.Strings(unknown)
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	sort.Strings(names)
	return fmt.Errorf("config file %s: unknown key(s) %s; valid keys are: %s",
		file, strings.Join(unknown, ", "), strings.Join(names, ", "))
}

// keysOf lists the mapstructure tags of a struct pointer's fields.
func keysOf(out any) map[string]bool {
	t := reflect.TypeOf(out)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	keys := map[string]bool{}
	for i := 0; i < t.NumField(); i++ {
		tag := strings.Split(t.Field(i).Tag.Get("mapstructure"), ",")[0]
		if tag != "" && tag != "-" {
			keys[tag] = true
		}
	}
	return keys
}

// isOverridden reports whether the value of key comes from a flag set on the command line or
// from the environment rather than from the file.
func isOverridden(fs *pflag.FlagSet, key string) bool {
	if f := fs.Lookup(key); f != nil && f.Changed {
		return true
	}
	_, ok := os.LookupEnv(EnvPrefix + "_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(key)))
	return ok
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// ExpandEnv replaces each ${NAME} in s with the value of the environment variable NAME
// (empty if unset). A bare $ is left alone, so prompts such as "costs $5" survive.
func ExpandEnv(s string) string {
	return envRef.ReplaceAllStringFunc(s, func(m string) string {
		return os.Getenv(m[2 : len(m)-1])
	})
}
