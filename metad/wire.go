package metad

import (
	"errors"
	"net/http"

	"stasis/cas"
)

// Wire types of the HTTP API (docs/API.md). Every call is
// POST /v1/<method> with a JSON request body and a JSON response body.

type lookupReq struct {
	Parent Node   `json:"parent"`
	Name   string `json:"name"`
}
type nodeReq struct {
	Node Node `json:"node"`
}
type inoReq struct {
	Ino Ino `json:"ino"`
}
type setAttrReq struct {
	Ino  Ino            `json:"ino"`
	Attr SetAttrRequest `json:"attr"`
}
type readlinkResp struct {
	Target string `json:"target"`
}
type linkReq struct {
	Ino       Ino    `json:"ino"`
	NewParent Ino    `json:"new_parent"`
	NewName   string `json:"new_name"`
}
type entryReq struct {
	Parent Ino    `json:"parent"`
	Name   string `json:"name"`
}
type renameReq struct {
	OldParent Ino         `json:"old_parent"`
	OldName   string      `json:"old_name"`
	NewParent Ino         `json:"new_parent"`
	NewName   string      `json:"new_name"`
	Flags     RenameFlags `json:"flags,omitempty"`
}
type readDirReq struct {
	Dir   Node   `json:"dir"`
	After string `json:"after,omitempty"`
	Limit int    `json:"limit,omitempty"`
}
type readDirResp struct {
	Entries []DirEntry `json:"entries"`
}
type xattrReq struct {
	Node Node   `json:"node"`
	Name string `json:"name"`
}
type xattrResp struct {
	Value []byte `json:"value"`
}
type listXattrResp struct {
	Names []string `json:"names"`
}
type setXattrReq struct {
	Ino   Ino    `json:"ino"`
	Name  string `json:"name"`
	Value []byte `json:"value"`
	Flags uint32 `json:"flags,omitempty"`
}
type removeXattrReq struct {
	Ino  Ino    `json:"ino"`
	Name string `json:"name"`
}
type prepareReq struct {
	IDs []cas.ChunkID `json:"ids"`
}
type snapReq struct {
	Dir  Ino    `json:"dir"`
	Name string `json:"name"`
}
type listSnapReq struct {
	Dir Ino `json:"dir"`
}
type listSnapResp struct {
	Snapshots []Snapshot `json:"snapshots"`
}
type gcReq struct {
	Sweep bool `json:"sweep,omitempty"`
}
type gcResp struct {
	Deleted int `json:"deleted"`
	Swept   int `json:"swept,omitempty"`
}
type empty struct{}

// errorBody is the body of every error response.
type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// errorCodes maps the API's sentinel errors to wire codes and statuses.
var errorCodes = []struct {
	err    error
	code   string
	status int
}{
	{ErrNotFound, "not_found", http.StatusNotFound},
	{ErrExists, "exists", http.StatusConflict},
	{ErrNotDir, "not_dir", http.StatusConflict},
	{ErrIsDir, "is_dir", http.StatusConflict},
	{ErrNotEmpty, "not_empty", http.StatusConflict},
	{ErrInvalid, "invalid", http.StatusBadRequest},
	{ErrReadOnly, "read_only", http.StatusForbidden},
	{ErrNoData, "no_data", http.StatusNotFound},
	{ErrConflict, "conflict", http.StatusConflict},
	{ErrMissingChunk, "missing_chunk", http.StatusConflict},
	{ErrUnavailable, "unavailable", http.StatusServiceUnavailable},
	{ErrNoSpace, "no_space", http.StatusInsufficientStorage},
	{ErrUnauthorized, "unauthorized", http.StatusUnauthorized},
}

// ErrUnauthorized is returned by the Client when metad rejects its token.
var ErrUnauthorized = errors.New("unauthorized")

func codeOf(err error) (string, int) {
	for _, c := range errorCodes {
		if errors.Is(err, c.err) {
			return c.code, c.status
		}
	}
	if errors.Is(err, ErrTxnTooBig) {
		return "no_space", http.StatusInsufficientStorage
	}
	return "internal", http.StatusInternalServerError
}

func errOfCode(code string) error {
	for _, c := range errorCodes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}
