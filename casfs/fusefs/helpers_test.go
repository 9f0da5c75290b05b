package fusefs_test

import "stasis/metad"

func nodeOf(ino uint64) metad.Node { return metad.Node{Ino: metad.Ino(ino)} }
