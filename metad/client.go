package metad

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"stasis/cas"
	"stasis/internal/busy"
)

// Client speaks metad's HTTP API and implements API. Errors come back as
// the sentinels of api.go (test them with errors.Is); transport failures and
// 5xx answers wrap ErrUnavailable, a rejected token ErrUnauthorized. The
// Client mints its own admin token from the shared keyring and renews it
// before it expires. Safe for concurrent use.
type Client struct {
	base    string
	keyring *cas.Keyring
	subject string
	hc      *http.Client
	now     func() time.Time

	mu     sync.Mutex
	token  string
	expiry time.Time
}

var _ API = (*Client)(nil)

// clientTokenTTL is the life of the tokens a Client mints for itself.
const clientTokenTTL = 10 * time.Minute

// NewClient returns a client of the metad at baseURL (e.g.
// "http://127.0.0.1:7000"). subject names the client in metad's logs; hc nil
// means http.DefaultClient.
func NewClient(baseURL string, keyring *cas.Keyring, subject string, hc *http.Client) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), keyring: keyring, subject: subject, hc: hc, now: time.Now}
}

func (c *Client) bearer() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.token == "" || now.Add(clientTokenTTL/4).After(c.expiry) {
		exp := now.Add(clientTokenTTL)
		tok, err := c.keyring.Mint(cas.Claims{Ops: cas.OpAdmin, Subject: c.subject, Scope: AuthScope, Expiry: exp})
		if err != nil {
			return "", err
		}
		c.token, c.expiry = tok, exp
	}
	return c.token, nil
}

// call posts req to /v1/method and decodes the answer into resp.
func (c *Client) call(ctx context.Context, method string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	tok, err := c.bearer()
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/"+method, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Authorization", "Bearer "+tok)
	r, err := busy.Do(c.hc, hr)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: metad %s: %v", ErrUnavailable, method, err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<30))
	if err != nil {
		return fmt.Errorf("%w: metad %s: reading response: %v", ErrUnavailable, method, err)
	}
	if r.StatusCode != http.StatusOK {
		var eb errorBody
		if json.Unmarshal(b, &eb) != nil || eb.Code == "" {
			return fmt.Errorf("%w: metad %s: HTTP %d", ErrUnavailable, method, r.StatusCode)
		}
		if sentinel := errOfCode(eb.Code); sentinel != nil {
			return &remoteError{sentinel: sentinel, msg: eb.Error}
		}
		return fmt.Errorf("%w: metad %s: %s", ErrUnavailable, method, eb.Error)
	}
	if err := json.Unmarshal(b, resp); err != nil {
		return fmt.Errorf("%w: metad %s: malformed response: %v", ErrUnavailable, method, err)
	}
	return nil
}

// remoteError carries metad's message and unwraps to the sentinel.
type remoteError struct {
	sentinel error
	msg      string
}

func (e *remoteError) Error() string { return "metad: " + e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

// Lookup implements Namespace.
func (c *Client) Lookup(ctx context.Context, parent Node, name string) (Attr, error) {
	var a Attr
	return a, c.call(ctx, "lookup", lookupReq{parent, name}, &a)
}

// GetAttr implements Namespace.
func (c *Client) GetAttr(ctx context.Context, n Node) (Attr, error) {
	var a Attr
	return a, c.call(ctx, "getattr", nodeReq{n}, &a)
}

// SetAttr implements Namespace.
func (c *Client) SetAttr(ctx context.Context, ino Ino, req SetAttrRequest) (Attr, error) {
	var a Attr
	return a, c.call(ctx, "setattr", setAttrReq{ino, req}, &a)
}

// Create implements Namespace.
func (c *Client) Create(ctx context.Context, req CreateRequest) (Attr, error) {
	var a Attr
	return a, c.call(ctx, "create", req, &a)
}

// Readlink implements Namespace.
func (c *Client) Readlink(ctx context.Context, n Node) (string, error) {
	var r readlinkResp
	err := c.call(ctx, "readlink", nodeReq{n}, &r)
	return r.Target, err
}

// Link implements Namespace.
func (c *Client) Link(ctx context.Context, ino Ino, newParent Ino, newName string) (Attr, error) {
	var a Attr
	return a, c.call(ctx, "link", linkReq{ino, newParent, newName}, &a)
}

// Unlink implements Namespace.
func (c *Client) Unlink(ctx context.Context, parent Ino, name string) error {
	return c.call(ctx, "unlink", entryReq{parent, name}, &empty{})
}

// Rmdir implements Namespace.
func (c *Client) Rmdir(ctx context.Context, parent Ino, name string) error {
	return c.call(ctx, "rmdir", entryReq{parent, name}, &empty{})
}

// Rename implements Namespace.
func (c *Client) Rename(ctx context.Context, oldParent Ino, oldName string, newParent Ino, newName string, flags RenameFlags) error {
	return c.call(ctx, "rename", renameReq{oldParent, oldName, newParent, newName, flags}, &empty{})
}

// ReadDir implements Namespace.
func (c *Client) ReadDir(ctx context.Context, dir Node, after string, limit int) ([]DirEntry, error) {
	var r readDirResp
	err := c.call(ctx, "readdir", readDirReq{dir, after, limit}, &r)
	return r.Entries, err
}

// GetXattr implements Namespace.
func (c *Client) GetXattr(ctx context.Context, n Node, name string) ([]byte, error) {
	var r xattrResp
	err := c.call(ctx, "getxattr", xattrReq{n, name}, &r)
	if err == nil && r.Value == nil {
		r.Value = []byte{}
	}
	return r.Value, err
}

// ListXattr implements Namespace.
func (c *Client) ListXattr(ctx context.Context, n Node) ([]string, error) {
	var r listXattrResp
	err := c.call(ctx, "listxattr", nodeReq{n}, &r)
	return r.Names, err
}

// SetXattr implements Namespace.
func (c *Client) SetXattr(ctx context.Context, ino Ino, name string, value []byte, flags uint32) error {
	return c.call(ctx, "setxattr", setXattrReq{ino, name, value, flags}, &empty{})
}

// RemoveXattr implements Namespace.
func (c *Client) RemoveXattr(ctx context.Context, ino Ino, name string) error {
	return c.call(ctx, "removexattr", removeXattrReq{ino, name}, &empty{})
}

// Open implements Namespace.
func (c *Client) Open(ctx context.Context, ino Ino) error {
	return c.call(ctx, "open", inoReq{ino}, &empty{})
}

// Release implements Namespace.
func (c *Client) Release(ctx context.Context, ino Ino) error {
	return c.call(ctx, "release", inoReq{ino}, &empty{})
}

// ReadPlan implements Content.
func (c *Client) ReadPlan(ctx context.Context, n Node) (ReadPlan, error) {
	var p ReadPlan
	return p, c.call(ctx, "readplan", nodeReq{n}, &p)
}

// PrepareUpload implements Content.
func (c *Client) PrepareUpload(ctx context.Context, ids []cas.ChunkID) (UploadPlan, error) {
	var p UploadPlan
	return p, c.call(ctx, "prepare", prepareReq{ids}, &p)
}

// Commit implements Content.
func (c *Client) Commit(ctx context.Context, req CommitRequest) (Attr, error) {
	var a Attr
	return a, c.call(ctx, "commit", req, &a)
}

// CreateSnapshot implements Snapshots.
func (c *Client) CreateSnapshot(ctx context.Context, dir Ino, name string) (Snapshot, error) {
	var s Snapshot
	return s, c.call(ctx, "snapshot/create", snapReq{dir, name}, &s)
}

// ListSnapshots implements Snapshots.
func (c *Client) ListSnapshots(ctx context.Context, dir Ino) ([]Snapshot, error) {
	var r listSnapResp
	err := c.call(ctx, "snapshot/list", listSnapReq{dir}, &r)
	return r.Snapshots, err
}

// DeleteSnapshot implements Snapshots.
func (c *Client) DeleteSnapshot(ctx context.Context, dir Ino, name string) error {
	return c.call(ctx, "snapshot/delete", snapReq{dir, name}, &empty{})
}

// Stats implements API.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	return s, c.call(ctx, "stats", empty{}, &s)
}

// Sync implements API.
func (c *Client) Sync(ctx context.Context) error {
	return c.call(ctx, "sync", empty{}, &empty{})
}

// GC asks metad for a garbage collection pass and returns the number of
// chunks it deleted.
func (c *Client) GC(ctx context.Context) (int, error) {
	var r gcResp
	err := c.call(ctx, "gc", gcReq{}, &r)
	return r.Deleted, err
}

// Sweep asks metad for a garbage collection pass followed by a sweep of
// every blockd for unreferenced chunks, and returns the number of chunks
// each deleted.
func (c *Client) Sweep(ctx context.Context) (gc, swept int, err error) {
	var r gcResp
	err = c.call(ctx, "gc", gcReq{Sweep: true}, &r)
	return r.Deleted, r.Swept, err
}
