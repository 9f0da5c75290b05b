package cas

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func testKeyring(t testing.TB, current uint32, ids ...uint32) *Keyring {
	t.Helper()
	keys := map[uint32][]byte{}
	for _, id := range ids {
		keys[id] = bytes.Repeat([]byte{byte(id) + 1}, KeySize)
	}
	k, err := NewKeyring(current, keys)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mint(t testing.TB, k *Keyring, c Claims) string {
	t.Helper()
	tok, err := k.Mint(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestTokenMintVerify(t *testing.T) {
	k := testKeyring(t, 1, 1)
	c := Claims{KeyID: 99, Ops: OpGet | OpHas, Subject: "casfs@node7", Scope: "blockd-a", Expiry: t0.Add(time.Minute)}
	tok := mint(t, k, c)
	if !strings.HasPrefix(tok, "v1.") {
		t.Fatalf("token %q lacks the version prefix", tok)
	}
	got, err := k.Verify(tok, OpGet, "blockd-a", t0)
	if err != nil {
		t.Fatal(err)
	}
	want := c
	want.KeyID = 1 // Mint ignores c.KeyID
	if !got.Expiry.Equal(want.Expiry) || got.Ops != want.Ops || got.Subject != want.Subject || got.Scope != want.Scope || got.KeyID != 1 {
		t.Fatalf("claims = %+v, want %+v", got, want)
	}
	if _, err := k.Verify(tok, OpGet|OpHas, "blockd-a", t0); err != nil {
		t.Fatalf("both granted ops: %v", err)
	}
	any := mint(t, k, Claims{Ops: OpPut, Scope: ScopeAny, Expiry: t0.Add(time.Hour)})
	if _, err := k.Verify(any, OpPut, "whatever", t0); err != nil {
		t.Fatalf("ScopeAny: %v", err)
	}
	if _, err := k.Mint(Claims{Subject: strings.Repeat("s", 256)}); err == nil {
		t.Fatal("oversize subject minted")
	}
}

func TestTokenRejections(t *testing.T) {
	k := testKeyring(t, 1, 1)
	good := mint(t, k, Claims{Ops: OpPut | OpHas, Subject: "s", Scope: "b", Expiry: t0.Add(time.Minute)})
	raw, _ := base64.RawURLEncoding.DecodeString(good[3:])
	flip := func(i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 1
		return "v1." + base64.RawURLEncoding.EncodeToString(b)
	}
	other := testKeyring(t, 1, 1)
	other.keys[1] = [KeySize]byte{42} // same id, different secret
	cases := []struct {
		name  string
		k     *Keyring
		tok   string
		need  Op
		scope string
		now   time.Time
		want  error
	}{
		{"mac bit flip", k, flip(len(raw) - 1), OpPut, "b", t0, ErrTokenForged},
		{"ops bit flip", k, flip(5), OpPut, "b", t0, ErrTokenForged},
		{"expiry bit flip", k, flip(13), OpPut, "b", t0, ErrTokenForged},
		{"scope bit flip", k, flip(len(raw) - 33), OpPut, "b\x01", t0, ErrTokenForged},
		{"other secret", other, good, OpPut, "b", t0, ErrTokenForged},
		{"truncated", k, good[:len(good)-5], OpPut, "b", t0, ErrTokenMalformed},
		{"truncated to prefix", k, "v1.", OpPut, "b", t0, ErrTokenMalformed},
		{"no prefix", k, good[3:], OpPut, "b", t0, ErrTokenMalformed},
		{"bad base64", k, good + "!", OpPut, "b", t0, ErrTokenMalformed},
		{"version flip", k, flip(0), OpPut, "b", t0, ErrTokenMalformed},
		{"trailing byte", k, "v1." + base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw), 0)), OpPut, "b", t0, ErrTokenMalformed},
		{"empty", k, "", OpPut, "b", t0, ErrTokenMalformed},
		{"expired", k, good, OpPut, "b", t0.Add(time.Minute), ErrTokenExpired},
		{"long expired", k, good, OpPut, "b", t0.Add(time.Hour), ErrTokenExpired},
		{"wrong op", k, good, OpDelete, "b", t0, ErrTokenScope},
		{"one op missing", k, good, OpPut | OpGet, "b", t0, ErrTokenScope},
		{"wrong scope", k, good, OpPut, "c", t0, ErrTokenScope},
		{"unknown key", testKeyring(t, 2, 2), good, OpPut, "b", t0, ErrTokenUnknownKey},
	}
	sentinels := []error{ErrTokenMalformed, ErrTokenUnknownKey, ErrTokenForged, ErrTokenExpired, ErrTokenScope}
	for _, tc := range cases {
		_, err := tc.k.Verify(tc.tok, tc.need, tc.scope, tc.now)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Verify = %v, want %v", tc.name, err, tc.want)
			continue
		}
		for _, s := range sentinels {
			if s != tc.want && errors.Is(err, s) {
				t.Errorf("%s: error %v also matches %v", tc.name, err, s)
			}
		}
	}
	// Every truncation of a good token is refused, none panics.
	for i := 0; i < len(good); i++ {
		if _, err := k.Verify(good[:i], OpPut, "b", t0); err == nil {
			t.Fatalf("truncation to %d chars verified", i)
		}
	}
}

func TestTokenRotation(t *testing.T) {
	old := testKeyring(t, 1, 1)
	oldTok := mint(t, old, Claims{Ops: OpGet, Scope: "b", Expiry: t0.Add(time.Hour)})
	rotated := testKeyring(t, 2, 1, 2) // new key 2 signs, old key 1 still verifies
	if _, err := rotated.Verify(oldTok, OpGet, "b", t0); err != nil {
		t.Fatalf("old token after rotation: %v", err)
	}
	newTok := mint(t, rotated, Claims{Ops: OpGet, Scope: "b", Expiry: t0.Add(time.Hour)})
	c, err := rotated.Verify(newTok, OpGet, "b", t0)
	if err != nil || c.KeyID != 2 || rotated.CurrentKeyID() != 2 {
		t.Fatalf("new token: %+v, %v", c, err)
	}
	if _, err := old.Verify(newTok, OpGet, "b", t0); !errors.Is(err, ErrTokenUnknownKey) {
		t.Fatalf("a server without the new key: %v", err)
	}
	dropped := testKeyring(t, 2, 2)
	if _, err := dropped.Verify(oldTok, OpGet, "b", t0); !errors.Is(err, ErrTokenUnknownKey) {
		t.Fatalf("old key dropped: %v", err)
	}
}

func TestParseKeyring(t *testing.T) {
	hexKey := strings.Repeat("ab", KeySize)
	k, err := ParseKeyring([]byte("# comment\n\n 7 " + hexKey + "\n3 " + strings.Repeat("cd", KeySize) + "\n"))
	if err != nil || k.CurrentKeyID() != 7 || len(k.keys) != 2 {
		t.Fatalf("ParseKeyring: %v", err)
	}
	fresh := NewSecretFile(5)
	fk, err := ParseKeyring(fresh)
	if err != nil || fk.CurrentKeyID() != 5 {
		t.Fatalf("NewSecretFile output does not parse: %v", err)
	}
	if bytes.Equal(fresh, NewSecretFile(5)) {
		t.Fatal("two fresh secrets are equal")
	}
	for name, in := range map[string]string{
		"empty":        "",
		"only comment": "# nothing\n",
		"one field":    "7\n",
		"three fields": "7 " + hexKey + " x\n",
		"bad id":       "x " + hexKey + "\n",
		"negative id":  "-1 " + hexKey + "\n",
		"big id":       "4294967296 " + hexKey + "\n",
		"short key":    "7 abcd\n",
		"not hex":      "7 " + strings.Repeat("zz", KeySize) + "\n",
		"repeated id":  "7 " + hexKey + "\n7 " + hexKey + "\n",
	} {
		if _, err := ParseKeyring([]byte(in)); err == nil {
			t.Errorf("%s: ParseKeyring accepted %q", name, in)
		}
	}
	if _, err := NewKeyring(1, map[uint32][]byte{1: make([]byte, 31)}); err == nil {
		t.Error("NewKeyring accepted a short key")
	}
	if _, err := NewKeyring(2, map[uint32][]byte{1: make([]byte, KeySize)}); err == nil {
		t.Error("NewKeyring accepted a current id not in the ring")
	}
}

func TestOpString(t *testing.T) {
	for op, want := range map[Op]string{0: "none", OpGet: "get", OpPut | OpHas: "has+put", OpDelete | OpAdmin: "delete+admin"} {
		if op.String() != want {
			t.Errorf("%d: %q, want %q", op, op.String(), want)
		}
	}
}

// FuzzTokenVerify feeds untrusted strings to Verify: no panic, and nothing
// but a correctly signed token verifies.
func FuzzTokenVerify(f *testing.F) {
	k := testKeyring(f, 1, 1)
	good := mint(f, k, Claims{Ops: OpGet, Subject: "s", Scope: "b", Expiry: t0.Add(time.Hour)})
	f.Add(good)
	f.Add("v1.")
	f.Add("v1.AQAAAAEB")
	f.Add(good[:len(good)-3])
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := k.Verify(tok, OpGet, "b", t0)
		if err != nil {
			for _, s := range []error{ErrTokenMalformed, ErrTokenUnknownKey, ErrTokenForged, ErrTokenExpired, ErrTokenScope} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error matches no sentinel: %v", err)
		}
		// It verified: it must be the good token's claims re-encoded,
		// since nothing else carries a valid MAC.
		again := mint(t, k, c)
		if _, err := k.Verify(again, OpGet, "b", t0); err != nil || c.Subject != "s" || c.Scope != "b" {
			t.Fatalf("forged token %q verified as %+v", tok, c)
		}
	})
}

// FuzzParseKeyring: secret files are read from disk; no panic on any input.
func FuzzParseKeyring(f *testing.F) {
	f.Add(NewSecretFile(1))
	f.Add([]byte("# c\n7 " + strings.Repeat("ab", KeySize) + "\n"))
	f.Add([]byte("1 zz\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKeyring(b)
		if err == nil && len(k.keys) == 0 {
			t.Fatal("empty keyring accepted")
		}
	})
}
