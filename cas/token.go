package cas

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/zeebo/blake3"
)

// Op is a set of operations a token grants.
type Op uint8

const (
	OpGet    Op = 1 << iota // read chunks
	OpHas                   // ask which chunks exist
	OpPut                   // store chunks
	OpDelete                // delete chunks (metad's garbage collector only)
	OpAdmin                 // metad administrative calls
)

func (o Op) String() string {
	var parts []string
	for _, x := range []struct {
		op   Op
		name string
	}{{OpGet, "get"}, {OpHas, "has"}, {OpPut, "put"}, {OpDelete, "delete"}, {OpAdmin, "admin"}} {
		if o&x.op != 0 {
			parts = append(parts, x.name)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "+")
}

// ScopeAny in a token's scope matches every verifier scope.
const ScopeAny = "*"

// Claims is what a token asserts: the key that signed it, the operations it
// grants, who it was issued to (Subject, for logs and audit), the resource it
// is valid for (Scope: a blockd server name, or ScopeAny) and when it expires.
type Claims struct {
	KeyID   uint32
	Ops     Op
	Subject string
	Scope   string
	Expiry  time.Time
}

// Token verification errors. Each failure mode has its own sentinel so
// servers can log precisely and tests can tell them apart.
var (
	ErrTokenMalformed  = errors.New("token malformed or truncated")
	ErrTokenUnknownKey = errors.New("token signed with an unknown key id")
	ErrTokenForged     = errors.New("token signature invalid")
	ErrTokenExpired    = errors.New("token expired")
	ErrTokenScope      = errors.New("token does not grant this operation or scope")
)

const (
	tokenPrefix  = "v1."
	tokenVersion = 1
	tokenMACSize = 32
	tokenContext = "stasis token v1\x00"
	// KeySize is the length of a token signing key.
	KeySize = 32
)

// Keyring holds the token signing keys, by key id. New tokens are signed
// with the current key; tokens signed with any key in the ring verify, which
// is how a secret is rotated: add the new key as current, keep the old one
// until its tokens have expired, then drop it.
type Keyring struct {
	current uint32
	keys    map[uint32][KeySize]byte
}

// NewKeyring builds a keyring; current must be one of the key ids.
func NewKeyring(current uint32, keys map[uint32][]byte) (*Keyring, error) {
	k := &Keyring{current: current, keys: make(map[uint32][KeySize]byte, len(keys))}
	for id, key := range keys {
		if len(key) != KeySize {
			return nil, fmt.Errorf("token key %d: want %d bytes, got %d", id, KeySize, len(key))
		}
		k.keys[id] = [KeySize]byte(key)
	}
	if _, ok := k.keys[current]; !ok {
		return nil, fmt.Errorf("current token key id %d is not in the keyring", current)
	}
	return k, nil
}

// ParseKeyring reads a secret file: one key per line as "KEYID HEX64",
// blank lines and lines starting with '#' ignored. The first key is the
// current one. Shared by metad (which mints) and blockd (which verifies).
func ParseKeyring(data []byte) (*Keyring, error) {
	keys := map[uint32][]byte{}
	var current uint32
	first := true
	sc := bufio.NewScanner(bytes.NewReader(data))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		f := strings.Fields(s)
		if len(f) != 2 {
			return nil, fmt.Errorf("secret file line %d: want \"KEYID HEXKEY\"", line)
		}
		id, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("secret file line %d: key id: %v", line, err)
		}
		key, err := hex.DecodeString(f[1])
		if err != nil || len(key) != KeySize {
			return nil, fmt.Errorf("secret file line %d: key must be %d hex digits", line, 2*KeySize)
		}
		if _, dup := keys[uint32(id)]; dup {
			return nil, fmt.Errorf("secret file line %d: key id %d repeated", line, id)
		}
		keys[uint32(id)] = key
		if first {
			current, first = uint32(id), false
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if first {
		return nil, errors.New("secret file holds no key")
	}
	return NewKeyring(current, keys)
}

// NewSecretFile returns the contents of a fresh secret file with one random
// key under the given id.
func NewSecretFile(id uint32) []byte {
	var key [KeySize]byte
	if _, err := rand.Read(key[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return fmt.Appendf(nil, "# stasis token secret; first key signs, all verify\n%d %x\n", id, key)
}

// CurrentKeyID is the id new tokens are signed with.
func (k *Keyring) CurrentKeyID() uint32 { return k.current }

// Mint signs the claims with the current key (c.KeyID is ignored). Subject
// and scope are limited to 255 bytes each.
func (k *Keyring) Mint(c Claims) (string, error) {
	if len(c.Subject) > 255 || len(c.Scope) > 255 {
		return "", errors.New("token subject and scope are limited to 255 bytes")
	}
	c.KeyID = k.current
	key := k.keys[k.current]
	b := make([]byte, 0, 16+len(c.Subject)+len(c.Scope)+tokenMACSize)
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint32(b, c.KeyID)
	b = append(b, byte(c.Ops))
	b = binary.BigEndian.AppendUint64(b, uint64(c.Expiry.Unix()))
	b = append(b, byte(len(c.Subject)))
	b = append(b, c.Subject...)
	b = append(b, byte(len(c.Scope)))
	b = append(b, c.Scope...)
	b = append(b, tokenMAC(&key, b)...)
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// Verify checks a token's signature and expiry, and that it grants every
// operation in need for the given scope. It returns the claims on success
// and an error wrapping one of the ErrToken* sentinels otherwise.
func (k *Keyring) Verify(tok string, need Op, scope string, now time.Time) (Claims, error) {
	c, err := k.parse(tok)
	if err != nil {
		return Claims{}, err
	}
	if !now.Before(c.Expiry) {
		return Claims{}, fmt.Errorf("%w at %s", ErrTokenExpired, c.Expiry.UTC().Format(time.RFC3339))
	}
	if c.Ops&need != need {
		return Claims{}, fmt.Errorf("%w: grants %s, needs %s", ErrTokenScope, c.Ops, need)
	}
	if c.Scope != ScopeAny && c.Scope != scope {
		return Claims{}, fmt.Errorf("%w: valid for %q, not %q", ErrTokenScope, c.Scope, scope)
	}
	return c, nil
}

func (k *Keyring) parse(tok string) (Claims, error) {
	var c Claims
	if !strings.HasPrefix(tok, tokenPrefix) {
		return c, fmt.Errorf("%w: missing %q prefix", ErrTokenMalformed, tokenPrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(tok[len(tokenPrefix):])
	if err != nil {
		return c, fmt.Errorf("%w: %v", ErrTokenMalformed, err)
	}
	const fixed = 1 + 4 + 1 + 8 + 1 + 1 + tokenMACSize
	if len(b) < fixed || b[0] != tokenVersion {
		return c, ErrTokenMalformed
	}
	body, mac := b[:len(b)-tokenMACSize], b[len(b)-tokenMACSize:]
	c.KeyID = binary.BigEndian.Uint32(body[1:5])
	c.Ops = Op(body[5])
	c.Expiry = time.Unix(int64(binary.BigEndian.Uint64(body[6:14])), 0)
	rest := body[14:]
	n := int(rest[0])
	if len(rest) < 1+n+1 {
		return Claims{}, ErrTokenMalformed
	}
	c.Subject = string(rest[1 : 1+n])
	rest = rest[1+n:]
	m := int(rest[0])
	if len(rest) != 1+m {
		return Claims{}, ErrTokenMalformed
	}
	c.Scope = string(rest[1:])
	key, ok := k.keys[c.KeyID]
	if !ok {
		return Claims{}, fmt.Errorf("%w %d", ErrTokenUnknownKey, c.KeyID)
	}
	if subtle.ConstantTimeCompare(tokenMAC(&key, body), mac) != 1 {
		return Claims{}, ErrTokenForged
	}
	return c, nil
}

func tokenMAC(key *[KeySize]byte, body []byte) []byte {
	h, _ := blake3.NewKeyed(key[:]) // cannot fail: the key has the right size
	h.WriteString(tokenContext)
	h.Write(body)
	return h.Sum(nil)
}
