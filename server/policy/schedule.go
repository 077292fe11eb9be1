package policy

import (
	"time"

	"github.com/robfig/cron/v3"
)

// cronSchedule is robfig/cron's parsed expression: the standard five
// fields or a descriptor (@daily, @every 1h).
type cronSchedule interface{ Next(time.Time) time.Time }

func parseCron(s string) (cronSchedule, error) { return cron.ParseStandard(s) }
