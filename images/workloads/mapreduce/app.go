package mapreduce

import (
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// KeyValue is one intermediate pair.
type KeyValue struct {
	Key   string `json:"k"`
	Value string `json:"v"`
}

// App is a MapReduce application: Map turns one input split (its name and
// contents) into intermediate pairs, Reduce turns all values of one key
// into the key's output value. Both must be deterministic: a re-executed
// task must produce the same output (the paper's Section 3.3 semantics).
type App struct {
	Name   string
	Map    func(name, contents string) []KeyValue
	Reduce func(key string, values []string) string
}

// AppByName returns a built-in application: "wordcount" or "index".
func AppByName(name string) (App, error) {
	switch name {
	case "wordcount":
		return WordCount(), nil
	case "index":
		return InvertedIndex(), nil
	}
	return App{}, fmt.Errorf("unknown mapreduce application %q (have wordcount, index)", name)
}

func words(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return !unicode.IsLetter(r) })
}

// WordCount counts occurrences of each word (a maximal run of letters).
func WordCount() App {
	return App{
		Name: "wordcount",
		Map: func(_, contents string) []KeyValue {
			var kvs []KeyValue
			for _, w := range words(contents) {
				kvs = append(kvs, KeyValue{Key: w, Value: "1"})
			}
			return kvs
		},
		Reduce: func(_ string, values []string) string { return strconv.Itoa(len(values)) },
	}
}

// InvertedIndex lists, for each word, the inputs it occurs in: "<n>
// <name>,<name>,...", names sorted.
func InvertedIndex() App {
	return App{
		Name: "index",
		Map: func(name, contents string) []KeyValue {
			seen := map[string]bool{}
			var kvs []KeyValue
			for _, w := range words(contents) {
				if !seen[w] {
					seen[w] = true
					kvs = append(kvs, KeyValue{Key: w, Value: name})
				}
			}
			return kvs
		},
		Reduce: func(_ string, values []string) string {
			docs := slices.Compact(slices.Sorted(slices.Values(values)))
			return fmt.Sprintf("%d %s", len(docs), strings.Join(docs, ","))
		},
	}
}

// partition is the reduce task of key: hash(key) mod R.
func partition(key string, nReduce int) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32()&0x7fffffff) % nReduce
}

// reduceAll sorts kvs by key and reduces each key's values, appending
// "key value\n" lines to out.
func reduceAll(app App, kvs []KeyValue, out []byte) []byte {
	slices.SortStableFunc(kvs, func(a, b KeyValue) int { return strings.Compare(a.Key, b.Key) })
	for i := 0; i < len(kvs); {
		j := i
		var values []string
		for ; j < len(kvs) && kvs[j].Key == kvs[i].Key; j++ {
			values = append(values, kvs[j].Value)
		}
		out = fmt.Appendf(out, "%s %s\n", kvs[i].Key, app.Reduce(kvs[i].Key, values))
		i = j
	}
	return out
}

// Sequential runs app over the inputs in one process: the reference a
// distributed run's output must equal (as a set of lines).
func Sequential(app App, inputs []Split) []byte {
	var kvs []KeyValue
	for _, in := range inputs {
		kvs = append(kvs, app.Map(in.Name, string(in.Data))...)
	}
	return reduceAll(app, kvs, nil)
}

// Split is one input: a name (what InvertedIndex reports) and contents.
type Split struct {
	Name string
	Data []byte
}

// ReadSplits reads input files as splits named by their base names.
func ReadSplits(paths []string) ([]Split, error) {
	var splits []Split
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read mapreduce input: %w", err)
		}
		splits = append(splits, Split{Name: filepath.Base(p), Data: b})
	}
	return splits, nil
}
