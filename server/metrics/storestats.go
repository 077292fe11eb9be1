package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyfleet/keyfleet/server/store/pgstore"
)

// statementCounter is a store that counts the statements it sends: the
// PostgreSQL store. bbolt sends none, and then the series is absent rather
// than a zero that would read as "no writes".
type statementCounter interface{ Stats() pgstore.Stats }

// storeStatements exposes the PostgreSQL store's statement count, so that
// an operator (and make bench) can divide the database's load by the
// rotations done: the figure the sizing of a cluster's database rests on.
type storeStatements struct{ st statementCounter }

var storeStatementsDesc = prometheus.NewDesc(Namespace+"_store_statements_total",
	"Statements the PostgreSQL store sent to the database (BEGIN and COMMIT included); absent with bbolt.", nil, nil)

func (s storeStatements) Describe(ch chan<- *prometheus.Desc) { ch <- storeStatementsDesc }
func (s storeStatements) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(storeStatementsDesc, prometheus.CounterValue, float64(s.st.Stats().Statements))
}
