package blockhash

import "testing"

func TestMayBlock(t *testing.T) {
	eng, err := NewEngine(EngineOptions{Pick: func(string) (string, bool) { return "", false }})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	auto, err := NewAuto(AutoOptions{Engine: eng})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		h    Hasher
		want bool
	}{
		{"approx", Approx{}, false},
		{"local", NewFallback(NewLocal(nil), nil), false},
		{"engine", NewFallback(eng, nil), true},
		{"auto, model not resolved", auto, true},
	} {
		if got := MayBlock(c.h, "m"); got != c.want {
			t.Errorf("%s: MayBlock = %v, want %v", c.name, got, c.want)
		}
	}
	if _, _, err := auto.Resolve("m"); err != nil {
		t.Fatal(err)
	}
	if !MayBlock(auto, "m") {
		t.Error("auto, model resolved to engine mode: MayBlock = false, want true")
	}
}
