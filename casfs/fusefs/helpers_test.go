package fusefs_test

import (
	"stasis/casfs/fusefs"
	"stasis/metad"
)

func nodeOf(ino uint64) metad.Node { return metad.Node{Ino: metad.Ino(ino)} }

func fusefsOptions() fusefs.Options { return fusefs.Options{} }
