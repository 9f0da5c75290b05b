package blockd_test

import (
	"testing"

	"stasis/blockd"
	"stasis/blockd/storetest"
)

func TestMemStoreConformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) blockd.PruneStore { return blockd.NewMemStore() })
}
