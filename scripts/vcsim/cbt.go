// Changed-block tracking and a writing guest, added to the stand-in (govmomi 0.24's
// simulator has neither): what Heron's warm migration needs to be tested against the API.
//
//   - A snapshot's disks get a change id, "heron-cbt/<snapshot>/<disk key>", in their backing,
//     and the stand-in records a hash of each 64 KiB block of the disk's data file (its FLAT
//     extent) at that moment.
//   - QueryChangedDiskAreas(snapshot, deviceKey, startOffset, changeId) answers the blocks
//     whose hash at that snapshot differs from the hash at `changeId`'s snapshot; with "*",
//     the blocks that are not all zero. One page covers the rest of the disk.
//   - A VM whose extraConfig has heron.sim.guest-writes = "TRUE" writes to its first disk
//     while it is powered on, as a running guest would: a numbered 4 KiB record every 20 ms
//     into a block chosen by the number. Powering it off stops the writer before the power
//     task ends, so what the disk holds after a power-off is final.
//
// Unlike ESXi, the data file is not frozen by the snapshot: a block written after the hashes
// are taken shows as changed at the next snapshot, so a copy loop that reads each round's
// changes after its snapshot still ends with every write.
package main

import (
	"bytes"
	"crypto/sha1"
	"encoding/binary"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const cbtBlock = 64 << 10

var flatExtent = regexp.MustCompile(`(?m)^\s*RW\s+\d+\s+(?:FLAT|VMFS)\s+"([^"]+)"`)

type cbt struct {
	mu      sync.Mutex
	hashes  map[string][][sha1.Size]byte  // change id → a hash per block (zeroes: all zero)
	writers map[string]chan chan struct{} // VM → its writer's stop channel
}

func newCbt() *cbt {
	return &cbt{hashes: map[string][][sha1.Size]byte{}, writers: map[string]chan chan struct{}{}}
}

func (c *cbt) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "HeronCbt", Value: "heron-cbt"}
}

// dataFile is the local file holding a disk's bytes: a descriptor's FLAT extent, or itself.
func dataFile(disk *types.VirtualDisk) (string, error) {
	backing, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if !ok || backing.Datastore == nil {
		return "", fmt.Errorf("disk %d is not a flat file on a datastore", disk.Key)
	}
	ds, ok := simulator.Map.Get(*backing.Datastore).(*simulator.Datastore)
	if !ok {
		return "", fmt.Errorf("disk %d: no datastore %s", disk.Key, backing.Datastore.Value)
	}
	name := backing.FileName
	if i := strings.Index(name, "]"); i >= 0 {
		name = strings.TrimSpace(name[i+1:])
	}
	file := filepath.Join(ds.Info.GetDatastoreInfo().Url, name)
	head := make([]byte, 4096)
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	n, _ := f.Read(head)
	f.Close()
	if m := flatExtent.FindSubmatch(head[:n]); m != nil {
		return filepath.Join(filepath.Dir(file), string(m[1])), nil
	}
	return file, nil
}

func hashBlocks(file string) ([][sha1.Size]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	zero := make([]byte, cbtBlock)
	var hashes [][sha1.Size]byte
	for at := 0; at < len(data); at += cbtBlock {
		block := data[at:min(at+cbtBlock, len(data))]
		if bytes.Equal(block, zero[:len(block)]) {
			hashes = append(hashes, [sha1.Size]byte{})
		} else {
			hashes = append(hashes, sha1.Sum(block))
		}
	}
	return hashes, nil
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// PutObject gives a new snapshot's disks their change ids, and records their blocks.
func (c *cbt) PutObject(obj mo.Reference) {
	snapshot, ok := obj.(*simulator.VirtualMachineSnapshot)
	if !ok {
		return
	}
	devices := make([]types.BaseVirtualDevice, 0, len(snapshot.Config.Hardware.Device))
	for _, device := range snapshot.Config.Hardware.Device {
		disk, ok := device.(*types.VirtualDisk)
		var backing *types.VirtualDiskFlatVer2BackingInfo
		if ok {
			backing, ok = disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		}
		if ok {
			id := fmt.Sprintf("heron-cbt/%s/%d", snapshot.Self.Value, disk.Key)
			file, err := dataFile(disk)
			var hashes [][sha1.Size]byte
			if err == nil {
				hashes, err = hashBlocks(file)
			}
			if err != nil {
				fmt.Fprintf(os.Stderr, "heron-vcsim: cbt: %s: %v\n", id, err)
			} else {
				c.mu.Lock()
				c.hashes[id] = hashes
				c.mu.Unlock()
				copied, copiedDisk := *backing, *disk
				copied.ChangeId = id
				copiedDisk.Backing = &copied
				device = &copiedDisk
			}
		}
		devices = append(devices, device)
	}
	snapshot.Config.Hardware.Device = devices
}

// UpdateObject starts and stops the writing guest of a VM that asks for one.
func (c *cbt) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	// The registry passes the managed object's data (mo.VirtualMachine), not the simulator's.
	if _, ok := obj.(*mo.VirtualMachine); !ok {
		return
	}
	vm, ok := simulator.Map.Get(obj.Reference()).(*simulator.VirtualMachine)
	if !ok {
		return
	}
	for _, change := range changes {
		if change.Name != "runtime.powerState" {
			continue
		}
		key := vm.Self.Value
		c.mu.Lock()
		stop, running := c.writers[key]
		delete(c.writers, key)
		c.mu.Unlock()
		if running {
			done := make(chan struct{})
			stop <- done
			<-done
		}
		if fmt.Sprint(change.Val) == string(types.VirtualMachinePowerStatePoweredOn) && writesAsGuest(vm) {
			c.startWriter(vm)
		}
	}
}

func (c *cbt) RemoveObject(types.ManagedObjectReference) {}

func writesAsGuest(vm *simulator.VirtualMachine) bool {
	for _, option := range vm.Config.ExtraConfig {
		value := option.GetOptionValue()
		if value.Key == "heron.sim.guest-writes" && fmt.Sprint(value.Value) == "TRUE" {
			return true
		}
	}
	return false
}

func (c *cbt) startWriter(vm *simulator.VirtualMachine) {
	var file string
	for _, device := range vm.Config.Hardware.Device {
		if disk, ok := device.(*types.VirtualDisk); ok {
			found, err := dataFile(disk)
			if err != nil {
				fmt.Fprintf(os.Stderr, "heron-vcsim: guest writes: %v\n", err)
				return
			}
			file = found
			break
		}
	}
	info, err := os.Stat(file)
	if err != nil || info.Size() < cbtBlock {
		return
	}
	stop := make(chan chan struct{})
	c.mu.Lock()
	c.writers[vm.Self.Value] = stop
	c.mu.Unlock()
	blocks := uint64(info.Size() / cbtBlock)
	go func() {
		f, err := os.OpenFile(file, os.O_WRONLY, 0)
		if err != nil {
			fmt.Fprintf(os.Stderr, "heron-vcsim: guest writes: %v\n", err)
			return
		}
		defer f.Close()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		record := make([]byte, 4096)
		for n := uint64(1); ; n++ {
			select {
			case done := <-stop:
				close(done)
				return
			case <-tick.C:
				copy(record, fmt.Sprintf("heron-sim guest write %d\n", n))
				binary.LittleEndian.PutUint64(record[4088:], n)
				at := int64((n*7919)%blocks)*cbtBlock + int64(n%15)*4096
				if _, err := f.WriteAt(record, at); err != nil {
					fmt.Fprintf(os.Stderr, "heron-vcsim: guest writes: %v\n", err)
				}
			}
		}
	}()
}

type queryChangedDiskAreas struct {
	This        string `xml:"_this"`
	Snapshot    string `xml:"snapshot"`
	DeviceKey   int32  `xml:"deviceKey"`
	StartOffset int64  `xml:"startOffset"`
	ChangeID    string `xml:"changeId"`
}

type envelope struct {
	Body struct {
		Query *queryChangedDiskAreas `xml:"QueryChangedDiskAreas"`
	} `xml:"Body"`
}

// handler answers QueryChangedDiskAreas and passes every other request on.
func (c *cbt) handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || path.Base(r.URL.Path) != "sdk" {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if !bytes.Contains(body, []byte("QueryChangedDiskAreas")) {
			next.ServeHTTP(w, r)
			return
		}
		var request envelope
		if err := xml.Unmarshal(body, &request); err != nil || request.Body.Query == nil {
			next.ServeHTTP(w, r)
			return
		}
		answer, fault := c.query(request.Body.Query)
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		if fault != "" {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, soapFault, xmlText(fault))
			return
		}
		fmt.Fprintf(w, soapAnswer, answer)
	})
}

func (c *cbt) query(q *queryChangedDiskAreas) (string, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now, ok := c.hashes[fmt.Sprintf("heron-cbt/%s/%d", q.Snapshot, q.DeviceKey)]
	if !ok {
		return "", fmt.Sprintf("no change tracking for disk %d at snapshot %s", q.DeviceKey, q.Snapshot)
	}
	var before [][sha1.Size]byte
	if q.ChangeID != "*" {
		if before, ok = c.hashes[q.ChangeID]; !ok {
			return "", "unknown change id " + q.ChangeID
		}
	}
	size := int64(len(now)) * cbtBlock
	if q.StartOffset < 0 || q.StartOffset > size || q.StartOffset%cbtBlock != 0 {
		return "", fmt.Sprintf("start offset %d is not a block inside the disk", q.StartOffset)
	}
	var areas strings.Builder
	runStart, runLength := int64(-1), int64(0)
	flush := func() {
		if runStart >= 0 {
			fmt.Fprintf(&areas, "<changedArea><start>%d</start><length>%d</length></changedArea>",
				runStart, runLength)
		}
		runStart, runLength = -1, 0
	}
	for block := q.StartOffset / cbtBlock; block < int64(len(now)); block++ {
		changed := now[block] != [sha1.Size]byte{}
		if before != nil {
			changed = block >= int64(len(before)) || now[block] != before[block]
		}
		if !changed {
			flush()
			continue
		}
		if runStart < 0 {
			runStart = block * cbtBlock
		}
		runLength += cbtBlock
	}
	flush()
	return fmt.Sprintf("<startOffset>%d</startOffset><length>%d</length>%s",
		q.StartOffset, size-q.StartOffset, areas.String()), ""
}

func xmlText(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

const soapAnswer = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval>%s</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>`

const soapFault = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><InvalidArgumentFault xmlns="urn:vim25" xsi:type="InvalidArgument"><invalidProperty>changeId</invalidProperty></InvalidArgumentFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`
