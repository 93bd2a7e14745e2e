// A JVM for the --on-signal test in tests/triggers.rs. Worker threads
// allocate, and throw and catch NullPointerExceptions (in compiled code,
// each one a SIGSEGV that the JVM's own handler turns into the exception)
// until the test writes "crash" on stdin; then the main thread writes
// through address 0 with sun.misc.Unsafe. That SIGSEGV is not a null check
// the JVM knows, so its handler writes hs_err and calls abort(). On "exit"
// the main thread calls System.exit(1) instead (the --on-exit test).
//
//   java Crash   prints "ready pid=N", then "npe=N" for each "count" line

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.lang.reflect.Field;
import java.util.concurrent.atomic.AtomicLong;

public class Crash {
    static final AtomicLong npeCaught = new AtomicLong();
    static volatile Object maybeNull;
    static volatile long sink;

    static int lengthOf(Object o) {
        return o.toString().length();
    }

    static void work() {
        for (long round = 0; ; round++) {
            int[] kept = new int[16 + (int) (round % 1024)];
            sink += kept.length;
            Object target = (round % 3 == 0) ? null : maybeNull;
            try {
                sink += lengthOf(target);
            } catch (NullPointerException e) {
                npeCaught.incrementAndGet();
            }
            if (round % 4096 == 0) {
                try {
                    Thread.sleep(1);
                } catch (InterruptedException e) {
                    return;
                }
            }
        }
    }

    static void writeThroughNull() throws Exception {
        Field field = sun.misc.Unsafe.class.getDeclaredField("theUnsafe");
        field.setAccessible(true);
        sun.misc.Unsafe unsafe = (sun.misc.Unsafe) field.get(null);
        unsafe.putAddress(0, 42);
    }

    public static void main(String[] args) throws Exception {
        maybeNull = "not null";
        for (int i = 0; i < 2; i++) {
            Thread t = new Thread(Crash::work, "npe-worker-" + i);
            t.setDaemon(true);
            t.start();
        }
        System.out.println("ready pid=" + ProcessHandle.current().pid());
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        for (String line; (line = in.readLine()) != null; ) {
            if (line.equals("count")) {
                System.out.println("npe=" + npeCaught.get());
                System.out.flush();
            } else if (line.equals("crash")) {
                writeThroughNull();
            } else if (line.equals("exit")) {
                System.exit(1);
            }
        }
    }
}
