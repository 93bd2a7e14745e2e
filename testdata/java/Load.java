// A JVM under load for tests/real_programs.rs: worker threads allocate,
// and throw and catch NullPointerExceptions (each one a SIGSEGV that the
// JVM's own handler turns into the exception), while coresnap dumps it.
// It counts the SIGUSR1s it receives, through the JVM's signal dispatcher,
// and keeps that count in a file, so the test can tell whether a dump lost
// one.
//
//   java Load COUNT_FILE   prints "ready pid=N" once its workers run
//
// COUNT_FILE holds "usr1=N npe=M" (NPEs caught so far), replaced whole.

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;
import sun.misc.Signal;

public class Load {
    static final AtomicLong usr1Received = new AtomicLong();
    static final AtomicLong npeCaught = new AtomicLong();
    static volatile Object maybeNull;
    static volatile long sink;

    static int lengthOf(Object o) {
        return o.toString().length();
    }

    static void work(int id) {
        List<int[]> kept = new ArrayList<>();
        for (long round = 0; ; round++) {
            kept.add(new int[16 + (int) (round % 1024)]);
            if (kept.size() > 2000) {
                kept.clear();
            }
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

    static synchronized void publish(Path file) {
        String text = "usr1=" + usr1Received.get() + " npe=" + npeCaught.get() + "\n";
        Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
        try {
            Files.write(tmp, text.getBytes(StandardCharsets.US_ASCII));
            Files.move(tmp, file, StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException e) {
            System.err.println("cannot write " + file + ": " + e);
            System.exit(2);
        }
    }

    public static void main(String[] args) throws Exception {
        Path file = Path.of(args[0]);
        publish(file);
        Signal.handle(new Signal("USR1"), sig -> {
            usr1Received.incrementAndGet();
            publish(file);
        });
        for (int i = 0; i < 3; i++) {
            int id = i;
            Thread t = new Thread(() -> work(id), "worker-" + i);
            t.setDaemon(true);
            t.start();
        }
        System.out.println("ready pid=" + ProcessHandle.current().pid());
        System.out.flush();
        while (true) {
            Thread.sleep(50);
            publish(file);
        }
    }
}
